"""The commit rule: never past an unfinished offset, whatever order settles come in."""

import random

from eventbus_kafka.offsets import PartitionOffsets, decode_done, encode_done


def test_nothing_taken_commits_the_start() -> None:
    offsets = PartitionOffsets(42)
    assert offsets.committable == 42
    assert offsets.needs_commit()


def test_lowest_unfinished_offset_is_committable() -> None:
    offsets = PartitionOffsets(0)
    for o in range(10):
        offsets.track(o)
    for o in (1, 2, 4, 5, 6, 7, 8, 9):  # 0 and 3 still running
        offsets.finish(o)
    assert offsets.committable == 0
    offsets.finish(0)
    assert offsets.committable == 3  # 3 is slow: never commit past it
    offsets.finish(3)
    assert offsets.committable == 10  # everything done: highest done + 1


def test_gaps_in_offsets_are_fine() -> None:
    offsets = PartitionOffsets(5)
    for o in (5, 7, 12):  # compaction or transaction markers leave holes
        offsets.track(o)
    offsets.finish(5)
    assert offsets.committable == 7
    offsets.finish(12)
    assert offsets.committable == 7
    offsets.finish(7)
    assert offsets.committable == 13


def test_finish_is_idempotent_and_ignores_unknown_offsets() -> None:
    offsets = PartitionOffsets(0)
    offsets.track(0)
    offsets.track(1)
    assert offsets.finish(1)
    assert not offsets.finish(1)
    assert not offsets.finish(99)
    assert offsets.committable == 0
    assert offsets.unfinished == 1


def test_revoked_partition_ignores_late_completions() -> None:
    offsets = PartitionOffsets(0)
    for o in range(3):
        offsets.track(o)
    offsets.finish(0)
    assert offsets.revoke() == (1, "")
    assert not offsets.finish(1)  # the old owner's late ack: the new owner redelivers 1
    assert offsets.committable == 1
    assert not offsets.needs_commit()
    assert not offsets.track(3)


def test_reread_after_offset_reset_is_not_tracked_twice() -> None:
    offsets = PartitionOffsets(0)
    offsets.track(0)
    offsets.track(1)
    offsets.finish(0)
    assert not offsets.track(0)
    assert not offsets.track(1)
    assert offsets.track(2)
    assert offsets.committable == 1


def test_needs_commit_tracks_what_was_committed() -> None:
    offsets = PartitionOffsets(0)
    offsets.track(0)
    offsets.track(1)
    offsets.committed = (0, "")
    assert not offsets.needs_commit()
    offsets.finish(1)  # the offset cannot move, but the metadata now lists 1 as finished
    assert offsets.to_commit() == (0, "eb1:1")
    assert offsets.needs_commit()
    offsets.committed = offsets.to_commit()
    assert not offsets.needs_commit()
    offsets.finish(0)
    assert offsets.to_commit() == (2, "")


def test_metadata_lists_finished_offsets_above_the_commit() -> None:
    offsets = PartitionOffsets(100)
    for o in range(100, 110):
        offsets.track(o)
    for o in (101, 102, 103, 105, 109):
        offsets.finish(o)
    assert offsets.to_commit() == (100, "eb1:1-3,5,9")
    assert decode_done(100, "eb1:1-3,5,9") == {101, 102, 103, 105, 109}


def test_next_owner_skips_what_the_metadata_lists() -> None:
    before = PartitionOffsets(10)
    for o in range(10, 16):
        before.track(o)
    for o in (11, 13, 14):
        before.finish(o)
    offset, metadata = before.revoke()
    after = PartitionOffsets(offset, decode_done(offset, metadata))
    delivered = [o for o in range(offset, 16) if not after.skip(o) and after.track(o)]
    assert delivered == [10, 12, 15]
    assert after.to_commit() == (10, "eb1:1,3-4")  # carried over until 10 and 12 finish
    for o in delivered:
        after.finish(o)
    assert after.to_commit() == (16, "")


def test_encoding_respects_the_budget_and_bad_metadata_means_nothing_skipped() -> None:
    done = range(1, 20_000, 2)  # no two adjacent: one range each
    text = encode_done(0, done, budget=200)
    assert len(text) <= 200
    listed = decode_done(0, text)
    assert listed and listed <= set(done)
    assert encode_done(0, []) == ""
    for bad in ("", "other", "eb1:x", "eb1:5-2", "eb1:-1", "eb1:1,,2"):
        assert decode_done(0, bad) == set()


def test_random_completion_order_matches_a_reference_model() -> None:
    rng = random.Random(7)
    for _ in range(200):
        start = rng.randrange(0, 1000)
        taken = sorted(rng.sample(range(start, start + 60), rng.randrange(1, 40)))
        offsets = PartitionOffsets(start)
        for o in taken:
            offsets.track(o)
        done: set[int] = set()
        for o in rng.sample(taken, len(taken)):
            offsets.finish(o)
            done.add(o)
            unfinished = [t for t in taken if t not in done]
            expected = unfinished[0] if unfinished else taken[-1] + 1
            assert offsets.committable == expected
            # The invariant that matters: everything below the committable offset is done.
            assert all(t in done for t in taken if t < offsets.committable)
