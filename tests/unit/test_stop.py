from chatd.engine.stop import StopMatcher


def _run(stops, pieces):
    matcher = StopMatcher(tuple(stops))
    emitted = []
    for piece in pieces:
        text, hit = matcher.feed(piece)
        emitted.append(text)
        if hit:
            return emitted, True
    emitted.append(matcher.flush())
    return emitted, False


def test_stop_inside_one_piece_returns_text_before_it():
    matcher = StopMatcher(("STOP",))
    assert matcher.feed("hello STOP world") == ("hello ", True)


def test_stop_split_across_pieces_is_matched_and_never_emitted():
    emitted, hit = _run(["llo"], ["Hel", "lo", " more"])
    assert hit
    assert emitted == ["He", ""]


def test_stop_split_over_many_pieces():
    emitted, hit = _run(["<|end|>"], ["ok", "<", "|", "en", "d|", ">tail"])
    assert hit
    assert "".join(emitted) == "ok"


def test_partial_prefix_is_held_then_released_when_it_does_not_complete():
    matcher = StopMatcher(("END",))
    assert matcher.feed("abc E") == ("abc ", False)
    assert matcher.feed("x") == ("Ex", False)


def test_longer_partial_prefix_is_held_until_resolved():
    matcher = StopMatcher(("END",))
    assert matcher.feed("aEN") == ("a", False)
    assert matcher.feed("Z") == ("ENZ", False)
    assert matcher.feed("EN") == ("", False)
    assert matcher.feed("D!") == ("", True)


def test_held_prefix_that_restarts_a_stop_keeps_only_the_live_part():
    matcher = StopMatcher(("aab",))
    assert matcher.feed("xa") == ("x", False)
    assert matcher.feed("a") == ("", False)
    assert matcher.feed("a") == ("a", False)
    assert matcher.feed("b") == ("", True)


def test_earliest_match_wins_among_several_stops():
    matcher = StopMatcher(("world", "lo w", "zzz"))
    assert matcher.feed("hello world") == ("hel", True)


def test_earliest_match_wins_when_a_later_listed_stop_starts_first_across_pieces():
    emitted, hit = _run(["cde", "bc"], ["ab", "cde"])
    assert hit
    assert "".join(emitted) == "a"


def test_partial_of_any_stop_is_held():
    matcher = StopMatcher(("xyz", "ab"))
    assert matcher.feed("123a") == ("123", False)
    assert matcher.feed("1xy") == ("a1", False)
    assert matcher.flush() == "xy"


def test_flush_returns_held_text_and_resets():
    matcher = StopMatcher(("END",))
    assert matcher.feed("done EN") == ("done ", False)
    assert matcher.flush() == "EN"
    assert matcher.flush() == ""
    assert matcher.feed("E") == ("", False)
    assert matcher.flush() == "E"


def test_no_stops_passes_text_through():
    matcher = StopMatcher(())
    assert matcher.feed("anything E") == ("anything E", False)
    assert matcher.flush() == ""


def test_empty_stop_strings_are_ignored():
    matcher = StopMatcher(("",))
    assert matcher.feed("abc") == ("abc", False)


def test_stop_at_very_start_emits_nothing():
    matcher = StopMatcher(("\n\n",))
    assert matcher.feed("\n") == ("", False)
    assert matcher.feed("\nrest") == ("", True)


def test_without_a_match_all_text_comes_out_in_order():
    text = "The END is not near, ENDLESS fun: E, EN, ..."
    pieces = [text[i : i + 3] for i in range(0, len(text), 3)]
    emitted, hit = _run(["ENDX"], pieces)
    assert not hit
    assert "".join(emitted) == text


def test_emitted_text_never_contains_the_stop():
    text = "abc the END. more"
    for split in range(1, len(text)):
        emitted, hit = _run(["END"], [text[:split], text[split:]])
        assert hit
        assert "".join(emitted) == "abc the "
