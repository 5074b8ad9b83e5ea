"""Probes never starve, and every wait is bounded (issue 13, item 7).

Against a real ``citeline serve`` on the real embedded PostgreSQL:

* with the audit table locked by another database session (``LOCK TABLE audit_log IN ACCESS EXCLUSIVE
  MODE``), more questions than the server has request threads get 503 with ``Retry-After`` within the
  bounded wait (``database.lock_timeout_s`` plus the queue), ``/healthz``, ``/readyz`` and ``/metrics``
  answer within 1 s throughout, and once the lock is released everything answers again;
* a stream is produced by one worker thread for its whole length (item 10e): while slow requests hold
  every request thread, a fast stream, once admitted, is not delayed again between its events (Starlette's
  default took one thread hop per event, each queueing behind the slow requests);
* with 20 slow generations at once (a generation backend that sleeps, registered through the
  ``citeline.generators`` entry point as a third-party package would register one), probes answer within
  1 s throughout, the generations within the limit answer 200, the excess gets 503 with ``Retry-After``
  after the bounded wait (streamed requests too, before their stream starts), and nothing is a 502 or 500.
"""

from __future__ import annotations

import os
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import psycopg
import pytest
from psycopg import sql

from tests.conftest import REPO
from tests.e2e.conftest import Server, run_server

pytestmark = [pytest.mark.security, pytest.mark.e2e]

PLUGINS = REPO / "tests" / "support" / "plugins"
DEPLOY = "how do I roll back a bad deploy"  # answered from alice's engineering runbook (not refused)
PROBES = ("/healthz", "/readyz", "/metrics")


class ProbeWatch:
    """Polls the probes in a background thread; records (path, status, seconds) of every call."""

    def __init__(self, server: Server, interval_s: float = 0.2) -> None:
        self.server = server
        self.interval_s = interval_s
        self.calls: list[tuple[str, int, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(timeout=5) as http:
            while not self._stop.is_set():
                for path in PROBES:
                    t0 = time.perf_counter()
                    try:
                        status = http.get(f"{self.server.url}{path}").status_code
                    except httpx.HTTPError:
                        status = 0  # timed out (5 s) or refused
                    self.calls.append((path, status, time.perf_counter() - t0))
                self._stop.wait(self.interval_s)

    def __enter__(self) -> ProbeWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def check(self, ready: bool = True) -> None:
        assert len(self.calls) >= 3 * len(PROBES), f"too few probe calls: {self.calls}"
        slow = [c for c in self.calls if c[2] >= 1.0 or c[1] == 0]
        assert not slow, f"probes slower than 1 s or failing: {slow[:10]} (of {len(self.calls)})"
        for path in PROBES:
            statuses = {c[1] for c in self.calls if c[0] == path}
            assert statuses == {200} if ready or path != "/readyz" else statuses <= {200, 503}, (path, statuses)


def _post(server: Server, user: str, question: str, *, stream: bool = False, timeout: float = 60) -> dict:
    """One request; status, Retry-After, the body (read to the end for a stream) and the seconds it took."""
    t0 = time.perf_counter()
    headers = {"Authorization": f"Bearer {server.keys[user]}"}
    try:
        with httpx.Client(timeout=timeout) as http:
            r = http.post(f"{server.url}/v1/ask", json={"question": question, "stream": stream}, headers=headers)
        out = {"status": r.status_code, "retry_after": r.headers.get("retry-after"), "text": r.text}
    except httpx.HTTPError as exc:
        out = {"status": 0, "retry_after": None, "text": repr(exc)}
    out["s"] = time.perf_counter() - t0
    out["stream"] = stream
    return out


def _all_at_once(n: int, call: Callable[[int], dict]) -> list[dict]:
    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(call, range(n)))


@pytest.fixture(scope="module")
def locking_server(tmp_path_factory, pg_url, embedder) -> Iterator[Server]:
    env = {"CITELINE_DATABASE__LOCK_TIMEOUT_S": "2", "CITELINE_SERVER__QUEUE_TIMEOUT_S": "3"}
    with run_server(tmp_path_factory.mktemp("lock"), pg_url, embedder, extra_env=env) as srv:
        yield srv


def test_a_locked_audit_table_answers_503_fast_and_probes_keep_answering(locking_server) -> None:
    server = locking_server
    assert _post(server, "alice", DEPLOY)["status"] == 200
    with psycopg.connect(server.pg_url) as locker:  # another database session, as an operator's or an attacker's
        locker.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(server.namespace)))
        locker.execute("LOCK TABLE audit_log IN ACCESS EXCLUSIVE MODE")
        with ProbeWatch(server) as watch:
            # more questions at once than the server has request threads (database.pool_max_size 8 + ...)
            results = _all_at_once(30, lambda i: _post(server, ("alice", "bob")[i % 2], f"{DEPLOY} (case {i})",
                                                       stream=i % 3 == 0, timeout=40))
            time.sleep(0.5)
        locker.rollback()  # releases the lock
    watch.check()
    statuses = sorted(r["status"] for r in results)
    assert set(statuses) == {503}, statuses
    assert all(r["retry_after"] and int(r["retry_after"]) > 0 for r in results), [r["retry_after"] for r in results]
    assert not any("roll" in r["text"].lower() for r in results)  # nothing of an unaudited answer left
    # bounded: the lock wait (2 s) and the queue for a request slot (3 s), with room for a loaded machine
    assert max(r["s"] for r in results) < 15, sorted(round(r["s"], 1) for r in results)
    # after the lock is gone: answers, streams and probes as before
    assert _post(server, "alice", DEPLOY)["status"] == 200
    streamed = _post(server, "alice", DEPLOY, stream=True)
    assert streamed["status"] == 200 and "event: done" in streamed["text"], streamed
    for path in PROBES:
        assert httpx.get(f"{server.url}{path}", timeout=5).status_code == 200


def test_a_locked_key_table_answers_503_not_500(locking_server) -> None:
    """Key lookups happen at the edge, before a request slot: their SQL is bounded too, and answered 503."""
    server = locking_server
    with psycopg.connect(server.pg_url) as locker:
        locker.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(server.namespace)))
        locker.execute("LOCK TABLE api_keys IN ACCESS EXCLUSIVE MODE")
        with ProbeWatch(server) as watch:
            results = _all_at_once(12, lambda i: _post(server, ("alice", "bob")[i % 2], f"{DEPLOY} (key {i})",
                                                       timeout=40))
            time.sleep(0.5)
        locker.rollback()
    watch.check()
    assert {r["status"] for r in results} == {503}, [(r["status"], r["text"][:200]) for r in results]
    assert all(r["retry_after"] for r in results)
    assert max(r["s"] for r in results) < 15, sorted(round(r["s"], 1) for r in results)
    assert _post(server, "alice", DEPLOY)["status"] == 200


@pytest.fixture(scope="module")
def slow_server(tmp_path_factory, pg_url, embedder) -> Iterator[Server]:
    path = os.pathsep.join([str(PLUGINS), str(REPO), *sys.path])
    env = {"PYTHONPATH": path, "CITELINE_TEST_GENERATION_S": "3", "CITELINE_GENERATION__MAX_CONCURRENT": "2",
           "CITELINE_GENERATION__QUEUE_TIMEOUT_S": "2", "CITELINE_SERVER__QUEUE_TIMEOUT_S": "2",
           "CITELINE_GENERATION__WHEN_BUSY": "reject"}
    with run_server(tmp_path_factory.mktemp("slow"), pg_url, embedder, backend="test-slow",
                    extra_env=env) as srv:
        yield srv


@pytest.fixture(scope="module")
def slow_default_server(tmp_path_factory, pg_url, embedder) -> Iterator[Server]:
    """The slow backend with the default generation.when_busy (extractive)."""
    path = os.pathsep.join([str(PLUGINS), str(REPO), *sys.path])
    env = {"PYTHONPATH": path, "CITELINE_TEST_GENERATION_S": "3", "CITELINE_GENERATION__MAX_CONCURRENT": "1"}
    with run_server(tmp_path_factory.mktemp("slow-default"), pg_url, embedder, backend="test-slow",
                    extra_env=env) as srv:
        yield srv


def test_by_default_a_question_the_busy_model_cannot_take_gets_the_extractive_answer(slow_default_server) -> None:
    """generation.when_busy = extractive: one slow generation runs, one question waits for it, the rest are
    answered at once from their evidence (200, cited, the note and the audit row say the model was busy),
    streams included; nothing is a 5xx and probes keep answering."""
    server = slow_default_server
    before = server.owner_sql("SELECT coalesce(max(id), 0) FROM audit_log")[0][0]
    with ProbeWatch(server) as watch:
        # twelve different texts (1 to 12 question marks): identical questions would share one generation (the
        # answer cache's single flight) instead of meeting the busy model
        results = _all_at_once(12, lambda i: _post(server, "alice", DEPLOY + "?" * (i + 1), stream=i % 3 == 0,
                                                   timeout=60))
    watch.check()
    assert [r["status"] for r in results] == [200] * 12, [(r["status"], r["text"][:200]) for r in results]
    busy = [r for r in results if "model was busy" in r["text"]]
    assert len(busy) >= 8, len(busy)  # at most one generating and one waiting at a time (3 s each)
    for r in busy:
        assert "roll" in r["text"].lower() and re.search(r"\[\d+\]", r["text"]), r["text"][:400]
        if r["stream"]:
            assert "event: done" in r["text"] and "event: error" not in r["text"]
        else:
            assert r["s"] < 8, r["s"]  # not made to wait for the model
    assert any(r["stream"] for r in busy)
    rows = server.owner_sql("SELECT payload FROM audit_log WHERE id > %s AND action = 'answer'", before)
    marked = [p for (p,) in rows if p.get("answered_by") == "extractive (model busy)"]
    assert len(marked) == len(busy), (len(marked), len(busy))
    assert all(p["verification"]["fallback"] for p in marked if p.get("verification"))


def test_twenty_slow_generations_leave_probes_alone_and_excess_gets_503(slow_server) -> None:
    server = slow_server
    with ProbeWatch(server) as watch:
        results = _all_at_once(20, lambda i: _post(server, "alice", f"{DEPLOY} (case {i})", stream=i % 4 == 0,
                                                   timeout=60))
    watch.check()
    statuses = [r["status"] for r in results]
    assert set(statuses) <= {200, 503}, statuses  # never a 502 (a model that stayed busy) or a 500
    ok = [r for r in results if r["status"] == 200]
    busy = [r for r in results if r["status"] == 503]
    assert len(ok) >= 2 and len(busy) >= 5, statuses
    assert all(r["retry_after"] and int(r["retry_after"]) > 0 for r in busy)
    assert all("generation" in r["text"] or "busy" in r["text"] for r in busy), busy[0]["text"]
    for r in ok:
        assert "roll" in r["text"].lower(), r["text"][:300]
        if r["stream"]:
            assert "event: done" in r["text"] and "event: error" not in r["text"]
    assert any(r["stream"] for r in busy), "an excess stream must be refused before its stream starts"
    # bounded: the slot waits (2 s each) and one generation (3 s) ahead, with room for a loaded machine
    assert max(r["s"] for r in busy) < 12, sorted(round(r["s"], 1) for r in busy)
    # and the server is fine afterwards
    assert _post(server, "alice", DEPLOY)["status"] == 200


def test_slots_are_given_back_when_streams_end_or_clients_leave(slow_server) -> None:
    """Streams that clients abandon after the first event give their generation slot back once their
    generation ends: twice as many abandoned streams as slots, and later requests still answer."""
    server = slow_server
    headers = {"Authorization": f"Bearer {server.keys['alice']}"}
    for round_ in range(2):
        for i in range(2):  # generation.max_concurrent = 2
            with httpx.Client(timeout=30) as http, http.stream(
                    "POST", f"{server.url}/v1/ask", json={"question": f"{DEPLOY} (gone {round_} {i})",
                                                          "stream": True}, headers=headers) as r:
                assert r.status_code == 200, r.read()
                assert next(r.iter_lines()).startswith("event: sources")
        time.sleep(4.5)  # the abandoned generations end (3 s each)
    results = _all_at_once(2, lambda i: _post(server, "alice", f"{DEPLOY} (after {i})"))
    assert [r["status"] for r in results] == [200, 200], results
    metrics = httpx.get(f"{server.url}/metrics", timeout=5).text
    assert "citeline_generations_in_progress 0.0" in metrics, metrics


@pytest.fixture(scope="module")
def busy_server(tmp_path_factory, pg_url, embedder) -> Iterator[Server]:
    path = os.pathsep.join([str(PLUGINS), str(REPO), *sys.path])
    env = {"PYTHONPATH": path, "CITELINE_TEST_GENERATION_S": "2", "CITELINE_TEST_STREAM_S": "0",
           "CITELINE_ANSWER__VERIFY": "off",  # a stream sends every word as its own event
           "CITELINE_GENERATION__MAX_CONCURRENT": "64", "CITELINE_SERVER__MAX_CONCURRENT_REQUESTS": "8",
           "CITELINE_SERVER__QUEUE_TIMEOUT_S": "30"}
    with run_server(tmp_path_factory.mktemp("busy"), pg_url, embedder, backend="test-slow",
                    extra_env=env) as srv:
        yield srv


def test_a_stream_is_not_delayed_between_events_while_slow_requests_hold_the_threads(busy_server) -> None:
    server = busy_server
    headers = {"Authorization": f"Bearer {server.keys['alice']}"}
    stop = threading.Event()
    statuses: list[int] = []

    def slow_client(i: int) -> None:  # closed loop: a new slow request as soon as the last one is answered
        n = 0
        while not stop.is_set():
            statuses.append(_post(server, "alice", f"{DEPLOY} (slow {i} {n})")["status"])
            n += 1

    with ThreadPoolExecutor(16) as pool:
        for i in range(16):
            pool.submit(slow_client, i)
        time.sleep(1.0)  # the slow requests hold every request thread, and more are always queued
        try:
            t0 = time.perf_counter()
            with httpx.Client(timeout=120) as http, http.stream(
                    "POST", f"{server.url}/v1/ask", json={"question": f"{DEPLOY} (fast)", "stream": True},
                    headers=headers) as r:
                assert r.status_code == 200
                lines = r.iter_lines()
                first = next(lines)
                t_first = time.perf_counter()
                rest = "\n".join(lines)
                t_done = time.perf_counter()
        finally:
            stop.set()
    assert first.startswith("event: sources") and "event: done" in rest, rest[:300]
    assert rest.count("event: delta") >= 5, rest[:300]  # word by word: many events, one hop each before
    # once the stream has started, its remaining events come without waiting for a thread again
    assert t_done - t_first < 1.0, (round(t_first - t0, 2), round(t_done - t_first, 2))
    assert set(statuses) == {200}, statuses


@pytest.mark.integration
def test_llamacpp_prompt_cache_does_not_grow_the_process_without_bound() -> None:
    """llama.cpp keeps earlier prompts' states in host memory, 8 GiB by default: under the 50-client load
    the server grew ~17 MiB per distinct answer. With generation.options.prompt_cache_mib bounding it, twelve
    distinct prompts leave the process's memory where the cache's bound puts it."""
    from citeline.generation.llamacpp import LlamaCppEngine, LlamaStats
    from citeline.generation.local import packaged_gguf

    def rss_mib() -> float:
        with open("/proc/self/status") as f:
            return int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1)) / 1024

    engine = LlamaCppEngine(packaged_gguf(), context_tokens=2048, threads=1, prompt_cache_mib=0)
    try:
        def answer(i: int) -> None:
            ids = engine.chat_ids([{"role": "user", "content": f"Write one sentence about robot {i}. " * 25}])
            "".join(engine.stream(ids, LlamaStats(), max_tokens=8, temperature=0.0, repetition_penalty=1.1))

        answer(0)  # buffers that a first generation allocates once
        before = rss_mib()
        for i in range(1, 13):
            answer(i)
        grew = rss_mib() - before
        assert grew < 12, f"RSS grew {grew:.1f} MiB over 12 distinct prompts (about 5 MiB each without a bound)"
    finally:
        engine.close()
