"""serving/bounds.py ``Deadlines``: one timer for every body deadline of a loop. A read past its
deadline answers TIMEOUT and its task goes on normally; any other cancellation still cancels."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from extauthz.serving import bounds

FRAME = b"\x00\x00\x00\x00\x03abc"


def _limits(timeout: float) -> bounds.Limits:
    return bounds.Limits(
        max_body=1024,
        timeout=timeout,
        budget=bounds.Budget(4096, 8192),
        deadlines=bounds.Deadlines(granularity=0.01),
    )


def _never_ends(first: bytes) -> Any:
    """A receive that hands over ``first`` (more to come) and then nothing, ever."""
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": first, "more_body": True}
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    return receive


def _split(first: bytes) -> Any:
    events = iter(
        [
            {"type": "http.request", "body": first, "more_body": True},
            {"type": "http.request", "body": b"", "more_body": False},
        ]
    )

    async def receive() -> dict[str, Any]:
        return next(events)

    return receive


def test_a_body_past_its_deadline_times_out_and_the_task_carries_on() -> None:
    limits = _limits(0.05)

    async def call() -> tuple[bytes, str | None, int]:
        body, why = await bounds.read_body(_never_ends(FRAME[:4]), limits, ("127.0.0.1", 1))
        await asyncio.sleep(0.02)  # the call goes on (answers its deny): no stray cancellation
        task = asyncio.current_task()
        assert task is not None
        return body, why, task.cancelling()

    body, why, cancelling = asyncio.run(call())
    assert (body, why, cancelling) == (b"", bounds.TIMEOUT, 0)
    assert limits.budget.total == 0 and not limits.budget.by_connection


def test_many_reads_each_keep_their_own_deadline() -> None:
    """Complete bodies are answered while stuck ones time out; the budget is all given back."""
    limits = _limits(0.1)

    async def main() -> list[str | None]:
        stuck = [bounds.read_body(_never_ends(FRAME[:3]), limits, ("h", i)) for i in range(5)]
        done = [bounds.read_body(_split(FRAME), limits, ("h", 10 + i)) for i in range(5)]
        results = await asyncio.gather(*stuck, *done)
        return [why for _, why in results]

    whys = asyncio.run(main())
    assert whys == [bounds.TIMEOUT] * 5 + [None] * 5
    assert limits.budget.total == 0


def test_a_cancellation_from_elsewhere_still_cancels() -> None:
    """A server cancelling the call (shutdown, client reset) is not turned into TIMEOUT."""
    limits = _limits(60)

    async def main() -> None:
        task = asyncio.ensure_future(bounds.read_body(_never_ends(FRAME[:3]), limits, None))
        await asyncio.sleep(0.02)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert limits.budget.total == 0


def test_an_app_outliving_its_first_event_loop_keeps_deadlines_on_the_next() -> None:
    """One app, two loops one after the other (tests and benches run an app under several
    asyncio.run calls): the second loop's reads time out too."""
    limits = _limits(0.05)

    async def stuck() -> str | None:
        _, why = await bounds.read_body(_never_ends(FRAME[:3]), limits, None)
        return why

    assert asyncio.run(stuck()) == bounds.TIMEOUT
    limits.deadlines = bounds.Deadlines(granularity=0.01)
    long = _limits(60)
    long.deadlines = limits.deadlines

    async def arm_far() -> None:
        task = asyncio.ensure_future(bounds.read_body(_never_ends(FRAME[:3]), long, None))
        await asyncio.sleep(0.01)  # the timer is armed 60 s ahead on this loop
        task.cancel()

    asyncio.run(arm_far())
    assert asyncio.run(asyncio.wait_for(stuck(), 5)) == bounds.TIMEOUT


def test_a_shutdown_cancellation_arriving_with_the_deadline_still_cancels() -> None:
    """The deadline passed and the server cancels the call in the same loop turn: the call is
    cancelled (not answered as a timeout with the shutdown swallowed)."""
    limits = _limits(60)

    async def main() -> None:
        task = asyncio.ensure_future(bounds.read_body(_never_ends(FRAME[:3]), limits, None))
        await asyncio.sleep(0.01)
        limits.deadlines._pending[task] = (0.0, 0)  # its deadline has passed
        limits.deadlines._fire()  # the deadline's cancellation...
        task.cancel()  # ...and the server's, before the task runs again
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert not limits.deadlines._expired and not limits.deadlines._pending


def test_a_shutdown_cancellation_arriving_just_before_the_deadline_still_cancels() -> None:
    """The other order: the server cancels first, the deadline fires in the same loop turn."""
    limits = _limits(60)

    async def main() -> None:
        task = asyncio.ensure_future(bounds.read_body(_never_ends(FRAME[:3]), limits, None))
        await asyncio.sleep(0.01)
        task.cancel()  # the server's cancellation...
        limits.deadlines._pending[task] = (0.0, limits.deadlines._pending[task][1])
        limits.deadlines._fire()  # ...then the deadline's, before the task runs again
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert not limits.deadlines._expired and not limits.deadlines._pending
