"""Leader-follower batching: concurrent callers of one slow operation share a call.

The first caller runs the operation at once on everything waiting; whoever arrives meanwhile forms the
next batch, and its oldest member leads it. No timer, so a lone caller pays nothing. Used for query
embeddings (one model call for many concurrent questions) and audit appends (one transaction and one
WAL flush for many rows).

One caller's bad item must not fail the others: when a batch of several fails, every caller in it runs
its own item again, alone and in its own thread (concurrently, so nobody waits for the others' retries),
and gets that result or that error. So ``run`` must be all or nothing: when it raises, none of the batch
took effect (one model call; one transaction).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

__all__ = ["Batcher"]

log = logging.getLogger(__name__)
T = TypeVar("T")
R = TypeVar("R")


class _Slot(Generic[T, R]):
    __slots__ = ("alone", "done", "error", "event", "item", "result")

    def __init__(self, item: T) -> None:
        self.item = item
        self.event = threading.Event()
        self.done = False
        self.alone = False  # the shared batch failed: run this item by itself
        self.result: R | None = None
        self.error: BaseException | None = None


class Batcher(Generic[T, R]):
    """Call ``run(items) -> results`` (same length, same order) for batches of concurrent callers."""

    def __init__(self, run: Callable[[list[T]], Sequence[R]], max_batch: int = 64) -> None:
        self._run_batch = run
        self._max = max_batch
        self._lock = threading.Lock()
        self._pending: list[_Slot[T, R]] = []
        self._busy = False

    def __call__(self, item: T) -> R:
        slot: _Slot[T, R] = _Slot(item)
        with self._lock:
            self._pending.append(slot)
            lead = not self._busy
            self._busy = True
        while True:
            if lead:
                self._run()
            slot.event.wait()
            if slot.done:
                if slot.alone:
                    return self._run_batch([item])[0]
                if slot.error is not None:
                    raise slot.error
                return slot.result  # type: ignore[return-value]
            slot.event.clear()  # woken to lead the next batch
            lead = True

    def _run(self) -> None:
        with self._lock:
            batch, self._pending = self._pending[: self._max], self._pending[self._max:]
        try:
            results = self._run_batch([s.item for s in batch])
            for s, r in zip(batch, results, strict=True):
                s.result = r
        except Exception as exc:
            if len(batch) == 1:
                batch[0].error = exc
            else:  # someone's item may be the cause: each caller retries its own, alone (see the docstring)
                log.info("a batch of %d failed (%s); its items are retried one by one", len(batch),
                         type(exc).__name__)
                for s in batch:
                    s.alone = True
        except BaseException as exc:  # KeyboardInterrupt and the like: every waiter gets it; nobody hangs
            for s in batch:
                s.error = exc
        for s in batch:
            s.done = True
            s.event.set()
        with self._lock:
            if self._pending:
                self._pending[0].event.set()  # hand the lead to the oldest waiter
            else:
                self._busy = False
