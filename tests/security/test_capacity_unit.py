"""The pieces behind bounded waits (issue 13, items 7 and 10e), without a server: generation slots and
the one-thread stream. The behaviour they give a real server is tested in test_starvation.py."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator

import pytest

from citeline.answers.assistant import GenerationSlots
from citeline.errors import OverloadedError
from citeline.serving.capacity import in_one_thread

pytestmark = [pytest.mark.security, pytest.mark.unit]


def test_a_full_generation_limit_is_an_overloaded_error_after_the_bounded_wait() -> None:
    slots = GenerationSlots(2, timeout_s=0.3)
    first, second = slots.acquire(), slots.acquire()
    assert slots.busy == 2
    t0 = time.perf_counter()
    with pytest.raises(OverloadedError, match="generation.max_concurrent"):
        slots.acquire()
    assert 0.25 < time.perf_counter() - t0 < 2
    first()
    first()  # a second release gives nothing back twice
    assert slots.busy == 1
    third = slots.acquire()  # the freed slot is usable
    with pytest.raises(OverloadedError):
        slots.acquire()
    second()
    third()
    assert slots.busy == 0


def test_a_waiting_caller_gets_the_slot_when_it_is_released() -> None:
    slots = GenerationSlots(1, timeout_s=5)
    release = slots.acquire()
    threading.Timer(0.2, release).start()
    with slots.hold():
        assert slots.busy == 1
    assert slots.busy == 0


def _collect(items: Iterator[str], stop_after: int | None = None) -> list[str]:
    async def run() -> list[str]:
        out = []
        gen = in_one_thread(items)
        async for piece in gen:
            out.append(piece)
            if stop_after is not None and len(out) >= stop_after:
                break
        await gen.aclose()
        return out

    return asyncio.run(run())


def test_a_stream_runs_in_one_thread_and_ready_pieces_go_out_together() -> None:
    threads: set[int] = set()

    def pieces() -> Iterator[str]:
        for i in range(50):
            threads.add(threading.get_ident())
            yield f"data: {i}\n\n"

    out = _collect(pieces())
    assert "".join(out) == "".join(f"data: {i}\n\n" for i in range(50))
    assert len(threads) == 1 and threading.get_ident() not in threads
    assert len(out) < 50  # pieces produced faster than sent are joined into fewer writes


def test_a_stream_the_client_leaves_is_closed_and_its_finally_runs() -> None:
    closed = threading.Event()

    def pieces() -> Iterator[str]:
        try:
            for i in range(1000):
                time.sleep(0.01)  # a model producing tokens
                yield f"{i} "
        finally:
            closed.set()  # the model stops, the generation slot is given back

    out = _collect(pieces(), stop_after=2)
    assert len(out) == 2
    assert closed.wait(5), "the abandoned stream was never closed"


def test_an_error_in_the_stream_reaches_the_reader() -> None:
    def pieces() -> Iterator[str]:
        yield "a"
        raise RuntimeError("model crashed")

    with pytest.raises(RuntimeError, match="model crashed"):
        _collect(pieces())


@pytest.mark.integration
def test_the_readiness_probe_answers_within_its_timeout_and_names_no_credentials(pg_url: str) -> None:
    from citeline.serving.capacity import ReadinessProbe
    from tests.e2e.conftest import free_port

    async def check(url: str) -> tuple[str | None, float]:
        probe = ReadinessProbe(url, timeout_s=2)
        t0 = time.perf_counter()
        try:
            return await probe.check(), time.perf_counter() - t0
        finally:
            await probe.close()

    assert asyncio.run(check(pg_url))[0] is None  # the real database answers SELECT 1
    reason, took = asyncio.run(check(f"postgresql://mallory:hunter2secret@127.0.0.1:{free_port()}/x"))
    assert reason is not None and "not reachable" in reason and took < 3
    assert "hunter2secret" not in reason and "mallory" not in reason


def test_a_full_waiting_line_is_an_overloaded_error_at_once() -> None:
    """One waiting caller per slot by default: the next does not queue (it would only time out later while
    holding a request slot), it is told at once."""
    slots = GenerationSlots(1, timeout_s=3)
    release = slots.acquire()
    got: list = []
    waiter = threading.Thread(target=lambda: got.append(slots.acquire()))  # waits for the slot
    waiter.start()
    time.sleep(0.2)
    t0 = time.perf_counter()
    with pytest.raises(OverloadedError, match="generation.max_waiting"):
        slots.acquire()
    assert time.perf_counter() - t0 < 0.5
    release()  # the waiter gets the slot
    waiter.join(timeout=5)
    assert not waiter.is_alive() and slots.busy == 1
    got[0]()
    none_waiting = GenerationSlots(1, timeout_s=3, max_waiting=0)
    held = none_waiting.acquire()
    with pytest.raises(OverloadedError, match="max_waiting"):
        none_waiting.acquire()
    held()
