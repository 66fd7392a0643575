"""What decoding one Kafka record into a `Message` costs, alone: the floor under any consume
path that decodes every record it fetches (docs/benchmarks.md, "The floor under Kafka batch
consume"). No broker: 200 000 records with the headers an eventbus producer writes, decoded by
`eventbus_kafka.wire.decode` as the fetch loop does, against appending their bodies to a list.

    uv run python -m benchmarks.kafka_decode_cost
"""

from __future__ import annotations

import time

from eventbus_kafka.wire import decode

from benchmarks.kafka_common import ce_headers

RECORDS = 200_000
ROUNDS = 3


def main() -> None:
    records = [
        (
            f"k{i % 100}".encode(),
            b"x" * 100,
            ce_headers("application/octet-stream"),
            1_700_000_000_000 + i // 50,
        )
        for i in range(RECORDS)
    ]
    best = float("inf")
    for _ in range(ROUNDS):
        started = time.perf_counter()
        for offset, (key, value, headers, timestamp) in enumerate(records):
            decode("t", "t", 0, offset, key, value, headers, timestamp)
        best = min(best, time.perf_counter() - started)
    started = time.perf_counter()
    bodies = [value for _key, value, _headers, _timestamp in records]
    listed = time.perf_counter() - started
    assert len(bodies) == RECORDS
    print(f"decode into a Message: {best / RECORDS * 1e6:.2f} us/record (best of {ROUNDS})")
    print(f"bodies into a list:    {listed / RECORDS * 1e6:.2f} us/record")


if __name__ == "__main__":
    main()
