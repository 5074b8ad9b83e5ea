"""Generation slots: at most ``generation.max_concurrent`` generations at once, a bounded wait for one."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator

from citeline.errors import OverloadedError

__all__ = ["GenerationSlots"]


class GenerationSlots:
    """At most ``limit`` generations at once (``generation.max_concurrent``), apart from the database pool.

    A caller that waits longer than ``timeout_s`` for a slot gets :class:`OverloadedError` (the server
    answers 503 with ``Retry-After``, or the extractive answer: ``generation.when_busy``) instead of queueing
    in front of a busy model without bound; so does a caller that finds ``max_waiting`` callers already
    waiting (at once: a queue longer than that would only time out later, holding a request slot meanwhile).
    """

    def __init__(self, limit: int, timeout_s: float, max_waiting: int | None = None) -> None:
        self.limit = limit
        self.timeout_s = timeout_s
        self.max_waiting = limit if max_waiting is None else max_waiting
        self._free = threading.BoundedSemaphore(limit)
        self._busy = 0
        self._waiting = 0
        self._lock = threading.Lock()

    @property
    def busy(self) -> int:
        return self._busy

    def acquire(self) -> Callable[[], None]:
        """Take a slot; returns its release (idempotent: a second call does nothing)."""
        got = self._free.acquire(blocking=False)
        if not got:
            with self._lock:
                full = self._waiting >= self.max_waiting
                if not full:
                    self._waiting += 1
            if full:
                raise OverloadedError(f"the model is busy: {self.limit} generations are running and "
                                      f"{self.max_waiting} questions are waiting for one (generation.max_concurrent, "
                                      "generation.max_waiting); retry later")
            try:
                got = self._free.acquire(timeout=self.timeout_s)
            finally:
                with self._lock:
                    self._waiting -= 1
        if not got:
            raise OverloadedError(f"the model is busy: {self.limit} generations are running and none finished "
                                  f"within {self.timeout_s:g} s (generation.max_concurrent, "
                                  "generation.queue_timeout_s); retry later")
        with self._lock:
            self._busy += 1
        released = threading.Event()

        def release() -> None:
            with self._lock:
                if released.is_set():
                    return
                released.set()
                self._busy -= 1
            self._free.release()

        return release

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        release = self.acquire()
        try:
            yield
        finally:
            release()
