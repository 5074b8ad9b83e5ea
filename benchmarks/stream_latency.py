"""Streamed vs whole answers under concurrent clients, on the same server (extractive backend by default).

    python benchmarks/stream_latency.py [--clients 50] [--duration 20] [--backend extractive] [--verify off]

Sets up the Acme example in its own namespace of the embedded database (as ``load_bench.py`` does),
starts ``citeline serve`` as a subprocess, then runs ``--clients`` closed-loop clients (asyncio + httpx,
one connection each) for ``--duration`` seconds asking ``POST /v1/ask`` without streaming, then the same
for ``"stream": true`` (Server-Sent Events read to the ``done`` event). Reports, per mode: requests,
errors, requests/s, client latency to the complete answer (p50/p95/max), for streams also the time to the
first byte and the number of events; the load average before and after (the load generator shares the
machine's cores with the server and PostgreSQL). ``--verify`` sets ``answer.verify`` on the server: under
``off`` (and ``flag``) a stream sends every word as its own event instead of each verified sentence.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import psycopg
from _common import database_url, git_revision, machine
from load_bench import QUESTIONS, setup
from psycopg import sql


def pct(xs: list[float]) -> dict[str, float]:
    if not xs:
        return {}
    return {"p50": round(float(np.percentile(xs, 50)), 1), "p95": round(float(np.percentile(xs, 95)), 1),
            "max": round(max(xs), 1)}


async def run_mode(base: str, keys: dict[str, str], clients: int, duration: float, stream: bool) -> dict:
    done: list[tuple[float, float, int, int]] = []  # (total ms, first byte ms, status, events)
    deadline = time.perf_counter() + duration

    async def worker(i: int) -> None:
        headers = {"Authorization": f"Bearer {keys[('alice', 'bob')[i % 2]]}"}
        n = i
        async with httpx.AsyncClient(timeout=60, headers=headers) as client:
            while time.perf_counter() < deadline:
                q = QUESTIONS[n % len(QUESTIONS)]
                n += clients
                t0 = time.perf_counter()
                first = 0.0
                events = 0
                try:
                    if not stream:
                        r = await client.post(f"{base}/v1/ask", json={"question": q})
                        status = r.status_code if r.status_code != 200 or "answer" in r.json() else 0
                        first = (time.perf_counter() - t0) * 1000
                    else:
                        async with client.stream("POST", f"{base}/v1/ask", json={"question": q, "stream": True}) as r:
                            status = r.status_code
                            finished = False
                            async for line in r.aiter_lines():
                                if not first:
                                    first = (time.perf_counter() - t0) * 1000
                                if line.startswith("event: "):
                                    events += 1
                                    finished = finished or line == "event: done"
                                    if line == "event: error":
                                        status = 0
                            if status == 200 and not finished:
                                status = 0
                except httpx.HTTPError:
                    status = 0
                done.append(((time.perf_counter() - t0) * 1000, first, status, events))

    t0 = time.perf_counter()
    await asyncio.gather(*(worker(i) for i in range(clients)))
    elapsed = time.perf_counter() - t0
    ok = [d for d in done if d[2] == 200]
    out: dict = {"mode": "stream" if stream else "whole", "clients": clients, "duration_s": round(elapsed, 1),
                 "requests": len(done), "errors": len(done) - len(ok),
                 "statuses": {str(s): sum(1 for d in done if d[2] == s) for s in sorted({d[2] for d in done})},
                 "requests_per_s": round(len(done) / elapsed, 1), "client_ms": pct([d[0] for d in ok])}
    if stream:
        out["first_byte_ms"] = pct([d[1] for d in ok])
        out["events_per_answer"] = round(float(np.mean([d[3] for d in ok])), 1) if ok else 0
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--duration", type=float, default=20, help="seconds per mode")
    parser.add_argument("--warmup", type=float, default=3)
    parser.add_argument("--backend", default="extractive")
    parser.add_argument("--verify", choices=["fallback", "drop", "flag", "off"], default=None,
                        help="answer.verify on the server (default: the config's, fallback)")
    args = parser.parse_args()
    url = database_url()
    tmp = Path(tempfile.mkdtemp(prefix="citeline-stream-"))
    env, keys = setup(tmp, url)
    env["CITELINE_GENERATION__BACKEND"] = args.backend
    if args.verify:
        env["CITELINE_ANSWER__VERIFY"] = args.verify
    port = 19000 + os.getpid() % 1000
    log = (tmp / "server.log").open("w")
    proc = subprocess.Popen([sys.executable, "-c", "from citeline.cli import main; main()", "serve", "--port",
                             str(port), "--log-level", "warning"], env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                    break
            time.sleep(0.5)
        asyncio.run(run_mode(base, keys, 4, args.warmup, stream=False))
        asyncio.run(run_mode(base, keys, 4, args.warmup, stream=True))
        load_before = os.getloadavg()
        modes = [asyncio.run(run_mode(base, keys, args.clients, args.duration, stream=s)) for s in (False, True)]
        load_after = os.getloadavg()
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(
                sql.Identifier(env["CITELINE_DATABASE__NAMESPACE"])))
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps({"benchmark": "stream_latency", "backend": args.backend, "verify": args.verify or "fallback",
                      "modes": modes,
                      "loadavg_1m_before_after": [round(load_before[0], 2), round(load_after[0], 2)],
                      "machine": machine(), "revision": git_revision()}, indent=2))


if __name__ == "__main__":
    main()
