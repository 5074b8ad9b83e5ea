"""How much the server works on at once, and what never waits: request slots, probes, streams in one thread.

The request path is blocking code (the database pool, the embedder, model backends) run in anyio's worker
threads. Without limits of its own, a burst of slow requests (generations, SQL waiting behind a lock)
takes every thread, and everything else (probes included) queues behind them with no bound. So:

* :class:`Admission` (ASGI middleware) admits at most ``server.max_concurrent_requests`` requests at a
  time; one that waits longer than ``server.queue_timeout_s`` for its turn is answered 503 with
  ``Retry-After`` (``server.retry_after_s``), before its body is read. The worker-thread limit is set a
  little above the number admitted, so an admitted request never waits for a thread. Probes (``/healthz``,
  ``/readyz``, ``/metrics``) bypass it: they are ``async`` and run on the event loop.
* :class:`ReadinessProbe` checks the database with ``SELECT 1`` over its own connection (not the request
  pool) within ``server.probe_timeout_s``, so ``/readyz`` answers 503 fast when the database does not,
  and 200 while the pool is busy.
* :func:`in_one_thread` runs a blocking stream (Server-Sent Events of an answer) in one worker thread for
  its whole length and hands its pieces to the event loop. Starlette's default iterates a sync generator
  with one thread hop per piece, each queueing for a thread behind every waiting request: under 50
  clients a streamed answer took several times as long as the same answer whole. Pieces that are ready
  together are sent in one write.

Generation has its own limit (``generation.max_concurrent``, :class:`citeline.answers.assistant.GenerationSlots`),
and request SQL its own lock and statement timeouts (:meth:`citeline.db.Database.limit_requests`).
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import anyio.to_thread
import psycopg
from starlette.types import ASGIApp, Receive, Scope, Send

__all__ = ["PROBES", "Admission", "ReadinessProbe", "RequestSlots", "in_one_thread"]

log = logging.getLogger(__name__)

PROBES = frozenset({"/healthz", "/readyz", "/metrics"})
_READY_QUERY = "SELECT 1"  # the readiness probe's query: the database answers, nothing more


class RequestSlots:
    """At most ``limit`` requests at a time; a wait longer than ``timeout_s`` is refused (shared counters)."""

    def __init__(self, limit: int, timeout_s: float, retry_after_s: int) -> None:
        self.limit = limit
        self.timeout_s = timeout_s
        self.retry_after_s = retry_after_s
        self._free: anyio.Semaphore | None = None  # made on the event loop, at the first request
        self.waiting = 0

    @property
    def busy(self) -> int:
        return self.limit - self._free.value if self._free is not None else 0

    async def acquire(self) -> bool:
        """Wait (up to ``timeout_s``) for a slot; False when none came free."""
        if self._free is None:
            self._free = anyio.Semaphore(self.limit)
        self.waiting += 1
        try:
            with anyio.move_on_after(self.timeout_s):
                await self._free.acquire()
                return True
        finally:
            self.waiting -= 1
        return False

    def release(self) -> None:
        assert self._free is not None
        self._free.release()


class Admission:
    """ASGI middleware: every request but the probes takes a :class:`RequestSlots` slot, or gets a 503."""

    def __init__(self, app: ASGIApp, *, slots: RequestSlots) -> None:
        self.app = app
        self.slots = slots

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in PROBES:
            await self.app(scope, receive, send)
            return
        if not await self.slots.acquire():
            await self._busy(send)
            return
        try:
            await self.app(scope, receive, send)
        finally:
            self.slots.release()

    async def _busy(self, send: Send) -> None:
        s = self.slots
        body = json.dumps({"error": {
            "message": f"the server is busy: no request slot came free within {s.timeout_s:g} s "
                       f"(server.max_concurrent_requests = {s.limit}); retry after {s.retry_after_s} s",
            "type": "server_error", "code": "overloaded", "param": None}}).encode()
        await send({"type": "http.response.start", "status": 503, "headers": [
            (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
            (b"retry-after", str(s.retry_after_s).encode())]})
        await send({"type": "http.response.body", "body": body})


class ReadinessProbe:
    """``SELECT 1`` over a connection of its own, bounded by ``timeout_s``; reconnects after a failure."""

    def __init__(self, url: str, timeout_s: float) -> None:
        self.url = url
        self.timeout_s = timeout_s
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._lock: asyncio.Lock | None = None

    async def check(self) -> str | None:
        """None when the database answered in time; else why not."""
        if self._lock is None:
            self._lock = asyncio.Lock()
        try:
            with anyio.fail_after(self.timeout_s):
                async with self._lock:
                    if self._conn is None or self._conn.closed:
                        self._conn = await psycopg.AsyncConnection.connect(
                            self.url, autocommit=True, connect_timeout=max(1, int(self.timeout_s)),
                            application_name="citeline-readyz")
                    await self._conn.execute(_READY_QUERY)
            return None
        except TimeoutError:
            reason = f"the database did not answer SELECT 1 within {self.timeout_s:g} s (server.probe_timeout_s)"
        except psycopg.Error as exc:  # the details (host, user) go to the log, not to unauthenticated callers
            log.warning("readiness: the database is not reachable: %s: %s", type(exc).__name__, str(exc).strip()[:300])
            reason = f"the database is not reachable ({type(exc).__name__}; details in the server log)"
        await self.close()
        return reason

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                await conn.close()
            except Exception:  # a broken connection is being thrown away anyway
                log.debug("closing the readiness connection failed", exc_info=True)


_END = object()


class _Failed:
    def __init__(self, error: BaseException) -> None:
        self.error = error


async def in_one_thread(items: Iterator[str]) -> AsyncIterator[str]:
    """The pieces of a blocking iterator, produced by one worker thread for its whole length.

    The thread runs ahead of the client (an answer is at most ``generation.max_tokens`` long), so a slow
    reader does not hold a thread. When the client goes away the thread stops at the next piece and closes
    the iterator (its ``finally`` blocks run: the model stops, the generation slot is given back).
    """
    loop = asyncio.get_running_loop()
    ready: collections.deque[Any] = collections.deque()
    wake = asyncio.Event()
    stop = threading.Event()

    def put(item: Any) -> None:
        ready.append(item)
        try:
            loop.call_soon_threadsafe(wake.set)
        except RuntimeError:  # the event loop is gone (shutdown): nobody is reading
            stop.set()

    def pump() -> None:
        try:
            for item in items:
                if stop.is_set():
                    break
                put(item)
        except BaseException as exc:  # handed to the reader, who raises it
            put(_Failed(exc))
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                try:
                    close()
                except Exception:
                    log.exception("closing a stream failed")
            put(_END)

    worker = asyncio.ensure_future(anyio.to_thread.run_sync(pump))
    try:
        while True:
            await wake.wait()
            wake.clear()
            while ready:
                # what is ready goes out as one write (SSE events delimit themselves): a stream whose pieces
                # come faster than they are sent costs one send, not one per piece; nothing waits to batch
                batch: list[str] = []
                while ready and isinstance(ready[0], str):
                    batch.append(ready.popleft())
                if batch:
                    yield "".join(batch)
                    continue
                item = ready.popleft()
                if item is _END:
                    return
                if isinstance(item, _Failed):
                    raise item.error
                yield item
    finally:
        stop.set()
        if worker.done():
            worker.exception()  # retrieved: no "exception was never retrieved" warning
        else:
            worker.add_done_callback(lambda w: w.cancelled() or w.exception())
