import numpy as np

from chatd.engine.detokenizer import Detokenizer

E_ACUTE = "é".encode()
EMOJI = "😀".encode()


def test_two_byte_char_split_over_two_tokens_appears_when_complete():
    detok = Detokenizer([b"a", E_ACUTE[:1], E_ACUTE[1:]], set())
    assert [detok.step(t) for t in (0, 1, 2)] == ["a", "", "é"]
    assert detok.flush() == ""


def test_four_byte_char_split_over_four_tokens_appears_when_complete():
    detok = Detokenizer([EMOJI[i : i + 1] for i in range(4)], set())
    assert [detok.step(t) for t in range(4)] == ["", "", "", "😀"]


def test_four_byte_char_split_over_three_tokens():
    detok = Detokenizer([EMOJI[:1], EMOJI[1:3], EMOJI[3:] + b"!"], set())
    assert [detok.step(t) for t in range(3)] == ["", "", "😀!"]


def test_token_completing_one_char_and_starting_another():
    detok = Detokenizer([E_ACUTE[:1], E_ACUTE[1:] + EMOJI[:2], EMOJI[2:]], set())
    assert [detok.step(t) for t in range(3)] == ["", "é", "😀"]


def test_hidden_tokens_yield_nothing():
    detok = Detokenizer([b"hi", b"<|eot|>"], {1})
    assert detok.step(1) == ""
    assert detok.step(0) == "hi"
    assert detok.step(1) == ""


def test_hidden_token_inside_a_split_char_does_not_break_it():
    detok = Detokenizer([E_ACUTE[:1], E_ACUTE[1:], b"<|eot|>"], {2})
    assert [detok.step(t) for t in (0, 2, 1)] == ["", "", "é"]


def test_flush_of_incomplete_char_yields_replacement_character():
    detok = Detokenizer([EMOJI[:2]], set())
    assert detok.step(0) == ""
    assert detok.flush() == "\ufffd"


def test_invalid_byte_yields_replacement_character():
    detok = Detokenizer([b"\xff", b"ok"], set())
    assert detok.step(0) + detok.step(1) == "\ufffdok"


def test_random_byte_split_decodes_like_whole_string():
    text = "Grüße, 世界! 😀👍🏽 naïve café — ok\n" * 5
    data = text.encode()
    rng = np.random.default_rng(2024)
    cuts = sorted(rng.choice(np.arange(1, len(data)), size=len(data) // 2, replace=False))
    bounds = [0, *map(int, cuts), len(data)]
    token_bytes = [data[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]
    assert any(len(tb) == 1 and tb[0] >= 0x80 for tb in token_bytes)
    detok = Detokenizer(token_bytes, set())
    steps = [detok.step(t) for t in range(len(token_bytes))]
    assert "".join(steps) + detok.flush() == text
    assert all("\ufffd" not in s for s in steps)
