"""The HTTP edge (issue 13, items 3 and 4): bad text is refused at the door, and nothing is read before auth.

Against a real ``citeline serve``: a NUL byte or a lone surrogate anywhere in a request body is a 400 that
names the field, and clients sending them concurrently fail none of the good clients' requests (the query
encoder's batch isolates a failing item: tested with the real encoder); a 200 MB body without a key is
refused before it is read (the server's RSS stays put), with a key it is a 413, a chunked body over the
limit too; per-key rate limits answer 429 with ``Retry-After`` and leave other keys alone; failed logins
are limited per client address; probes are never limited; the limits come from ``CITELINE_SERVER__*``.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from citeline.batching import Batcher
from tests.e2e.conftest import Server, run_server

pytestmark = [pytest.mark.security, pytest.mark.e2e]

MB = 1024 * 1024


def _auth(server: Server, user: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {server.keys[user]}", "Content-Type": "application/json"}


def _pid(server: Server) -> int:
    """The server process (found by its --port argument in /proc)."""
    port = server.url.rsplit(":", 1)[1]
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            args = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"serve" in args and b"--port" in args and args[args.index(b"--port") + 1] == port.encode():
            return int(proc.name)
    raise AssertionError(f"no server process with --port {port}")


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def _metric(server: Server, name: str) -> float:
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name) and not line.startswith("#"))


# -- item 3: bad text at the edge ----------------------------------------------------------------------
NUL, SURROGATE = "\\u0000", "\\ud800"  # as JSON escapes: json.loads turns them into "\x00" and a lone "\ud800"

BAD_BODIES = [
    ("/v1/ask", '{"question": "how do I roll back%s a bad deploy"}', "question"),
    ("/v1/chat/completions", '{"model": "citeline", "messages": [{"role": "system", "content": "be brief"},'
     ' {"role": "user", "content": "roll back%s a deploy"}]}', "messages[1].content"),
    ("/v1/chat/completions", '{"messages": [{"role": "user", "content": [{"type": "text", "text": "deploy%s"}]}]}',
     "messages[0].content[0].text"),
    ("/v1/chat/completions", '{"messages": [{"role": "user", "content": "deploy"}], "stop": ["x%s"]}', "stop[0]"),
    ("/v1/admin/principals", '{"user": "mallory", "groups": ["staff", "eng%s"]}', "groups[1]"),
    ("/v1/admin/keys", '{"user": "bob", "label": "ci%s"}', "label"),
]


@pytest.mark.parametrize("escape", [NUL, SURROGATE], ids=["nul", "surrogate"])
@pytest.mark.parametrize(("path", "template", "field"), BAD_BODIES, ids=[f"{p}:{f}" for p, _, f in BAD_BODIES])
def test_bad_text_in_a_body_is_400_naming_the_field(server, path, template, field, escape):
    body = (template % escape).encode()
    json.loads(body)  # valid JSON: the problem is the text it decodes to
    method = "PUT" if path.endswith("principals") else "POST"
    r = httpx.request(method, f"{server.url}{path}", content=body, headers=_auth(server, "admin"), timeout=60)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error" and error["code"] == "invalid_text"
    assert error["param"] == field
    what = "a NUL byte (\\u0000)" if escape == NUL else "a lone surrogate (\\ud800)"
    assert error["message"].startswith(f"{field} contains {what}"), error["message"]
    assert "mallory" not in {r[0] for r in server.owner_sql("SELECT user_id FROM principals")}


def test_a_nul_in_the_path_is_400(server):
    r = httpx.delete(f"{server.url}/v1/admin/keys/abc%00def", headers=_auth(server, "admin"), timeout=30)
    assert r.status_code == 400 and "NUL" in r.json()["error"]["message"], r.text


def test_bad_clients_do_not_fail_good_clients(server):
    """Two clients sending NUL bytes and lone surrogates while four ask unique questions (no query cache)."""
    results: dict[str, list[int]] = {"good": [], "bad": []}
    lock = threading.Lock()
    stop = threading.Event()

    def good(n: int) -> None:
        with httpx.Client(timeout=120) as http:
            for i in range(8):
                r = http.post(f"{server.url}/v1/ask", headers=_auth(server, "alice"),
                              json={"question": f"how do I roll back a bad deploy, case {n}-{i}-{time.time_ns()}"})
                with lock:
                    results["good"].append(r.status_code)
        stop.set()

    def bad(n: int) -> None:
        with httpx.Client(timeout=120) as http:
            i = 0
            while not stop.is_set() or i < 4:
                escape = NUL if (n + i) % 2 else SURROGATE
                body = (f'{{"question": "how do I roll back a deploy {escape} {n}-{i}-{time.time_ns()}"}}').encode()
                r = http.post(f"{server.url}/v1/ask", headers=_auth(server, ("bob", "carol")[n]), content=body)
                with lock:
                    results["bad"].append(r.status_code)
                i += 1
                time.sleep(0.05)  # under the default per-key rate: this test is about bad text, not floods

    threads = [threading.Thread(target=good, args=(n,)) for n in range(4)]
    threads += [threading.Thread(target=bad, args=(n,)) for n in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    assert results["good"] and set(results["good"]) == {200}, sorted(results["good"])
    assert results["bad"] and set(results["bad"]) == {400}, sorted(results["bad"])


def test_the_query_batch_isolates_a_failing_item_with_the_real_encoder(embedder):
    """A lone surrogate makes the real tokenizer raise for its whole batch: only its caller gets the error."""
    encode = embedder.query_encoder
    with pytest.raises(Exception):  # noqa: B017 - the real tokenizer's own error type
        encode(["fine", "bad \ud800 text"])
    gate = threading.Event()
    calls: list[int] = []

    def run(texts: list[str]) -> np.ndarray:
        calls.append(len(texts))
        gate.wait(30)  # the first batch (one caller) holds the lead until everyone else has queued
        return encode(texts)

    batcher: Batcher[str, np.ndarray] = Batcher(run)
    texts = [f"how do I roll back deploy number {i}" for i in range(6)]
    texts.insert(3, "bad \ud800 text")
    out: dict[int, object] = {}

    def call(i: int) -> None:
        try:
            out[i] = batcher(texts[i])
        except Exception as exc:
            out[i] = exc

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(texts))]
    threads[0].start()
    while not calls:
        time.sleep(0.01)
    for t in threads[1:]:
        t.start()
    deadline = time.monotonic() + 30
    while len(batcher._pending) < len(texts) - 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    gate.set()
    for t in threads:
        t.join(timeout=60)
    assert calls[1] == len(texts) - 1  # the rest did run as one batch, and it failed
    assert isinstance(out[3], Exception)
    for i, text in enumerate(texts):
        if i != 3:
            assert isinstance(out[i], np.ndarray), (i, out[i])
            assert np.allclose(out[i], encode([text])[0], atol=1e-4)


# -- item 4: limits before work --------------------------------------------------------------------------
def _huge(total: int, chunk: int = MB) -> Iterator[bytes]:
    yield b'{"question": "'
    sent = 14
    block = b"a" * chunk
    while sent + chunk < total - 2:
        yield block
        sent += chunk
    yield b"a" * (total - 2 - sent) + b'"}'


def _post_huge(server: Server, headers: dict[str, str], total: int, chunked: bool = False) -> tuple[httpx.Response
                                                                                                    | None, float]:
    h = {"Content-Type": "application/json", **headers}
    if not chunked:
        h["Content-Length"] = str(total)
    t0 = time.monotonic()
    try:
        r = httpx.post(f"{server.url}/v1/ask", content=_huge(total), headers=h, timeout=60)
    except httpx.TransportError:
        return None, time.monotonic() - t0
    return r, time.monotonic() - t0


def test_a_200_mb_body_without_a_key_is_401_before_it_is_read(server):
    pid = _pid(server)
    httpx.get(f"{server.url}/v1/models", headers=_auth(server, "alice"), timeout=30)
    before = _rss_kb(pid)
    failures = _metric(server, "citeline_auth_failures_total")
    r, took = _post_huge(server, {}, 200 * MB)
    assert r is not None and r.status_code == 401, (r and r.text)
    assert "missing API key" in r.json()["error"]["message"]
    after = _rss_kb(pid)
    print(f"\n[edge] 200 MB body, no key: {r.status_code} in {took:.2f} s; server RSS {before} -> {after} kB")
    assert took < 3, took
    assert after - before < 20 * 1024, (before, after)
    assert _metric(server, "citeline_auth_failures_total") == failures + 1


def test_the_server_answers_without_waiting_for_an_unread_body(server):
    """Headers that promise 200 MB, then 1 KB and silence: the 401 and the 413 come anyway.

    (Only a little is sent: the server answers and closes without reading the rest, and a client still
    writing a large body into a closed connection gets a broken pipe or a reset that can discard the reply.)
    """
    for headers, status in [({}, 401), (_auth(server, "alice"), 413)]:
        host, port = server.url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=10) as s:
            head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
            s.sendall(f"POST /v1/ask HTTP/1.1\r\nHost: x\r\n{head}Content-Length: {200 * MB}\r\n\r\n".encode())
            s.sendall(b"a" * 1024)
            reply = s.recv(65536).decode("latin-1")
        assert reply.startswith(f"HTTP/1.1 {status}"), reply[:200]


def test_a_200_mb_body_with_a_key_is_413_naming_the_limit(server):
    pid = _pid(server)
    before = _rss_kb(pid)
    r, took = _post_huge(server, _auth(server, "alice"), 200 * MB)
    assert r is not None and r.status_code == 413, (r and r.text[:300])
    message = r.json()["error"]["message"]
    assert "1048576 bytes" in message and "server.max_body_bytes" in message, message
    after = _rss_kb(pid)
    print(f"\n[edge] 200 MB body, alice's key: {r.status_code} in {took:.2f} s; server RSS {before} -> {after} kB")
    assert took < 3 and after - before < 20 * 1024


def test_a_chunked_body_over_the_limit_is_413(server):
    r, _ = _post_huge(server, _auth(server, "alice"), 3 * MB, chunked=True)
    assert r is not None and r.status_code == 413, (r and r.text[:300])
    rejected = _metric(server, 'citeline_rejected_requests_total{reason="body_too_large"}')
    assert rejected >= 2
    r = httpx.post(f"{server.url}/v1/ask", headers=_auth(server, "alice"), timeout=60,
                   content=iter([b'{"question": ', b'"how do I roll back a bad deploy"}']))  # chunked, small
    assert r.status_code == 200, r.text


@pytest.fixture(scope="module")
def limited(tmp_path_factory, pg_url, embedder) -> Iterator[Server]:
    env = {"CITELINE_SERVER__RATE_LIMIT_PER_MINUTE": "30", "CITELINE_SERVER__RATE_LIMIT_BURST": "5",
           "CITELINE_SERVER__AUTH_FAILURES_PER_MINUTE": "6", "CITELINE_SERVER__AUTH_FAILURE_BURST": "4",
           "CITELINE_SERVER__MAX_BODY_BYTES": "4096"}
    with run_server(tmp_path_factory.mktemp("limited"), pg_url, embedder, extra_env=env) as srv:
        yield srv


def test_limits_come_from_the_environment(limited):
    r = httpx.post(f"{limited.url}/v1/ask", headers=_auth(limited, "carol"), timeout=30,
                   json={"question": "x" * 5000})
    assert r.status_code == 413 and "4096 bytes" in r.json()["error"]["message"], r.text


def test_a_key_over_its_rate_is_429_with_retry_after_and_other_keys_are_unaffected(limited):
    statuses = []
    with httpx.Client(timeout=30) as http:
        for _ in range(8):
            r = http.get(f"{limited.url}/v1/models", headers=_auth(limited, "alice"))
            statuses.append(r.status_code)
        assert statuses[:5] == [200] * 5 and statuses[-1] == 429, statuses
        assert 1 <= int(r.headers["Retry-After"]) <= 3, r.headers
        assert "rate limit" in r.json()["error"]["message"] and r.json()["error"]["code"] == "rate_limit_exceeded"
        assert http.get(f"{limited.url}/v1/models", headers=_auth(limited, "bob")).status_code == 200
        for _ in range(40):  # probes are never limited
            assert http.get(f"{limited.url}/healthz").status_code == 200
        assert http.get(f"{limited.url}/readyz").status_code == 200
        time.sleep(int(r.headers["Retry-After"]))
        assert http.get(f"{limited.url}/v1/models", headers=_auth(limited, "alice")).status_code == 200
    assert _metric(limited, 'citeline_rejected_requests_total{reason="rate_limited"}') >= 1


def test_failed_logins_are_limited_per_address_but_known_keys_still_work(limited):
    wrong = {"Authorization": "Bearer cl_aaaaaaaaaaaa_" + "x" * 43}
    with httpx.Client(timeout=30) as http:
        assert http.get(f"{limited.url}/v1/models", headers=_auth(limited, "carol")).status_code == 200
        statuses = [http.get(f"{limited.url}/v1/models", headers=wrong).status_code for _ in range(6)]
        assert statuses[:4] == [401] * 4 and statuses[-1] == 429, statuses
        r = http.get(f"{limited.url}/v1/models", headers=wrong)
        assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
        assert http.get(f"{limited.url}/v1/models", headers=_auth(limited, "carol")).status_code == 200
