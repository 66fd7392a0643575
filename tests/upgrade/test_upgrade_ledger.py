"""The rolling-upgrade ledger (`upgrade_harness.analyse`) finds what it must: pure, no broker."""

from __future__ import annotations

from upgrade_harness import DeadLetter, Line, Planned, UpgradeLedger, analyse

GOOD = Planned("a", "k00", 0)
ONCE = Planned("b", "k01", 0, fail=1)
REJECTED = Planned("c", "k01", 1, reject=True)
EXHAUSTED = Planned("d", "k01", 2, fail=-1)
PLAN = [GOOD, ONCE, REJECTED, EXHAUSTED]


def line(p: Planned, attempt: int, outcome: str, at: float, label: str = "0.2") -> Line:
    return Line(label, label, 1, "broker", p.id, p.key, p.seq, attempt, outcome, at, at + 0.1, ())


def letter(p: Planned, reason: str, attempts: str) -> DeadLetter:
    return DeadLetter(p.id, reason, attempts, "g-broker", ("eventbus-dlq-reason",))


LINES = [
    line(GOOD, 1, "ok", 1.0, label="0.1"),
    line(ONCE, 1, "fail", 1.0, label="0.1"),
    line(REJECTED, 1, "reject", 1.2),
    line(EXHAUSTED, 1, "fail", 1.4, label="0.1"),
    line(ONCE, 2, "ok", 3.0),
    line(EXHAUSTED, 2, "fail", 3.5),
    line(EXHAUSTED, 3, "fail", 5.0, label="0.1"),
]
LETTERS = [letter(REJECTED, "rejected", "1"), letter(EXHAUSTED, "retries-exhausted", "3")]


def check(lines: list[Line], letters: list[DeadLetter]) -> UpgradeLedger:
    group = analyse("broker", PLAN, lines, letters, check_order_of={"k00", "k01"})
    return UpgradeLedger("kafka", ("0.1", "0.2"), len(PLAN), 2, [group])


def test_a_clean_run_has_no_problems() -> None:
    ledger = check(LINES, LETTERS)
    assert ledger.problems() == []
    g = ledger.groups[0]
    assert (g.handled, g.dead_lettered, g.duplicates, g.lost) == (2, 2, 0, [])
    assert g.crossings == {"0.1->0.2": 2, "0.2->0.1": 1}


def test_a_message_neither_handled_nor_dead_lettered_is_lost() -> None:
    ledger = check([x for x in LINES if (x.id, x.outcome) != (ONCE.id, "ok")], LETTERS)
    assert ledger.groups[0].lost == ["k01/0"]
    assert any("1 lost" in p for p in ledger.problems())


def test_a_missing_or_wrong_dead_letter_is_a_problem() -> None:
    assert any("1 dead-lettered" in p for p in check(LINES, LETTERS[:1]).problems())
    wrong = [LETTERS[0], letter(EXHAUSTED, "retries-exhausted", "2")]
    assert check(LINES, wrong).groups[0].wrong_dead_letters
    unexpected = [*LETTERS, letter(GOOD, "rejected", "1")]
    assert check(LINES, unexpected).groups[0].unexpected_dead_letters == ["k00/0"]


def test_an_attempt_count_lost_between_versions_is_a_problem() -> None:
    reset = [x for x in LINES if x.id != ONCE.id]
    reset += [line(ONCE, 1, "fail", 1.0, label="0.1"), line(ONCE, 1, "ok", 3.0)]
    assert check(reset, LETTERS).groups[0].wrong_attempts


def test_duplicates_are_counted_not_failed() -> None:
    ledger = check([*LINES, line(GOOD, 1, "ok", 6.0)], LETTERS)  # redelivered after a stop
    assert ledger.groups[0].duplicates == 1
    assert ledger.problems() == []


def test_order_and_overlaps_per_key() -> None:
    late = [x for x in LINES if x.id != REJECTED.id] + [line(REJECTED, 1, "reject", 0.9)]
    assert check(late, LETTERS).groups[0].order_violations == 1
    overlap = [*LINES, line(GOOD, 1, "ok", 1.05)]  # a second copy while the first ran
    assert check(overlap, LETTERS).groups[0].key_overlaps == 1
