"""A grammar that fails in the middle of a sequence ends that sequence with a short error
event, and the scheduler goes on serving."""

from chatd.engine.constraints import MAX_ERROR_CHARS, regex_grammar
from chatd.engine.scheduler import Scheduler
from chatd.engine.sequence import Status
from chatd.engine.types import Grammar
from tests.unit.fake_runner import FakeRunner
from tests.unit.test_scheduler import of, run_until_idle, submit


def test_a_grammar_error_mid_sequence_is_a_clean_error_event_and_others_go_on():
    scheduler = Scheduler(FakeRunner(n_slots=2))
    # Compiles and allows "a" first, then llguidance's lexer gives up on the second token.
    broken = submit(scheduler, "x", max_tokens=8, grammar=Grammar(regex_grammar("(a{1000}){1000}")))
    fine = submit(scheduler, "abc", max_tokens=3)

    events = run_until_idle(scheduler)

    last = of(events, broken)[-1]
    assert last.error and last.error.startswith("grammar: ")
    assert "too many expressions" in last.error
    assert len(last.error) <= len("grammar: ") + MAX_ERROR_CHARS and "\n" not in last.error
    assert broken.status is Status.FINISHED
    assert "".join(e.text for e in of(events, fine)) == "def"
    assert of(events, fine)[-1].finish_reason == "length"

    after = submit(scheduler, "abc", max_tokens=2)
    assert "".join(e.text for e in of(run_until_idle(scheduler), after)) == "de"
