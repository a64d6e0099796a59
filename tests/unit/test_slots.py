"""Which free slot a prompt takes, and so which cached prefixes survive (engine/slots.py)."""

from chatd.engine.slots import SlotTable

HEAD = [1, 2, 3]  # what every chat prompt shares: the template's first tokens


def table_with(*cached: list[int]) -> SlotTable:
    """A table whose slots 0, 1, ... were released, in that order, holding these tokens."""
    table = SlotTable(len(cached))
    for slot, tokens in enumerate(cached):
        table.take([0], reusable=0)
        table.release(slot, tokens)
    return table


def test_a_new_conversation_takes_an_empty_slot_not_one_it_shares_a_head_with():
    conversation = HEAD + list(range(100, 140))
    table = table_with(conversation, [])
    slot, reused = table.take(HEAD + [7, 8, 9], reusable=10**6)
    assert slot == 1 and reused == 0  # slot 0 keeps its 43 tokens
    assert table.take(conversation + [5, 6], reusable=10**6) == (0, len(conversation))


def test_a_next_turn_takes_its_conversation_s_slot_whatever_its_number():
    first, second = HEAD + [10] * 20, HEAD + [20] * 20
    table = table_with(first, second, [])
    assert table.take(second + [21, 22], reusable=10**6) == (1, len(second))
    assert table.take(first + [11], reusable=10**6) == (0, len(first))


def test_without_an_empty_or_similar_slot_the_least_recently_used_is_taken():
    table = table_with(HEAD + [10] * 40, HEAD + [20] * 40, HEAD + [30] * 40)
    assert table.take([0], reusable=0)[0] == 0  # the least recently used, given back at once:
    table.release(0, HEAD + [10] * 40)  # slot 0 is now the most recently used
    slot, reused = table.take(HEAD + [99] * 5, reusable=10**6)
    assert slot == 1 and reused == len(HEAD)  # its head is reused: it is overwritten past it


def test_a_prompt_that_keeps_enough_of_a_slot_takes_it():
    cached = HEAD + [10] * 27  # 30 tokens: a prompt sharing 3 keeps 10 %
    table = table_with(cached, [])
    assert table.take(HEAD + [99], reusable=10**6) == (0, 3)


def test_reuse_stops_at_the_first_image_and_before_the_last_prompt_token():
    cached = HEAD + [10] * 20
    table = table_with(cached)
    assert table.take(cached, reusable=10**6) == (0, len(cached) - 1)
    table.release(0, cached)
    assert table.take(cached + [1], reusable=5) == (0, 5)
