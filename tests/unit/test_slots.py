"""`Slots`, the concurrency limit: bound, FIFO hand-off, and cancelled waiters."""

import asyncio

import anyio

from eventbus.dispatch.slots import Slots


async def test_waiters_get_slots_in_arrival_order_and_never_exceed_the_total() -> None:
    slots = Slots(2)
    order: list[int] = []
    peak = 0

    async def worker(i: int) -> None:
        nonlocal peak
        await slots.acquire()
        peak = max(peak, slots.used)
        order.append(i)
        await anyio.sleep(0.01)
        slots.release()

    async with anyio.create_task_group() as tg:
        for i in range(6):
            tg.start_soon(worker, i)
            await anyio.sleep(0.001)  # start in order
    assert order == [0, 1, 2, 3, 4, 5]
    assert peak == 2
    assert slots.used == 0


async def test_a_cancelled_waiter_does_not_leak_a_slot() -> None:
    slots = Slots(1)
    await slots.acquire()
    with anyio.move_on_after(0.01):
        await slots.acquire()  # cancelled while waiting
    slots.release()
    assert slots.used == 0
    # A waiter handed the slot just as its task is cancelled passes it on to the next one.
    await slots.acquire()
    got: list[str] = []

    async def waiter(name: str) -> None:
        await slots.acquire()
        got.append(name)

    first = asyncio.create_task(waiter("first"))
    await asyncio.sleep(0.01)
    second = asyncio.create_task(waiter("second"))
    await asyncio.sleep(0.01)
    slots.release()  # handed to "first"...
    first.cancel()  # ...whose task is cancelled before it runs again
    await asyncio.wait_for(second, 5)
    assert first.cancelled()
    assert got == ["second"]
    assert slots.used == 1
    slots.release()
    assert slots.used == 0
