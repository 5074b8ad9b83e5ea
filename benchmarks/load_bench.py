"""Load test: concurrent clients against a real `citeline serve` (extractive backend) on localhost.

    python benchmarks/load_bench.py [--concurrency 20 50] [--duration 30]

Sets up the Acme example in its own namespace of the embedded database (alice and bob get API keys),
starts `citeline serve` as a subprocess, then for each concurrency level runs that many closed-loop
clients (asyncio + httpx, one connection each) for ``--duration`` seconds, asking a rotating set of
varied questions as alice and bob in turn (``POST /v1/ask``). Reports requests/s, errors, client
latency, the server's own per-stage latency (from each answer's ``latency_ms``), *server overhead* =
everything the request's thread did but generation (API-key lookup + total − generate), *in-server time*
(the ``Server-Timing`` header: from the request's arrival in the app to its response, waiting for a free
request thread included), and the database pool as /metrics saw it (sampled every 0.25 s). The load
generator shares the machine's cores with the server and PostgreSQL.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import numpy as np
import psycopg
from _common import REPO, database_url, git_revision, machine
from psycopg import sql

from citeline.facade import Citeline
from citeline.settings import Settings

TOPICS = ["roll back a bad deploy", "the return policy", "the warranty on a Scout S2", "parental leave",
          "the office printer", "paper jams", "the incident runbook", "the Fleet API rate limits",
          "onboarding for new starters", "a refund for a partner order", "the vacuum gripper", "premium support",
          "the salary bands", "a robot that stops mid-mission", "the Dock charging station", "firmware updates"]
FORMS = ["how do I handle {}?", "what should I know about {}", "tell me about {}", "where can I read about {}?"]
QUESTIONS = [f.format(t) for t in TOPICS for f in FORMS] + ["what is the capital of Mongolia?",
                                                               "who won the 1966 world cup?"]


def setup(tmp: Path, url: str) -> tuple[dict[str, str], dict[str, str]]:
    root = tmp / "acme"
    shutil.copytree(REPO / "examples" / "acme", root, ignore=shutil.ignore_patterns(".citeline"))
    namespace = f"load_{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "CITELINE_DATABASE_URL": url, "CITELINE_DATABASE__NAMESPACE": namespace,
           "CITELINE_CONFIG": str(root / "citeline.toml"), "CITELINE_GENERATION__BACKEND": "extractive",
           "CITELINE_DATABASE__POOL_MAX_SIZE": os.environ.get("CITELINE_DATABASE__POOL_MAX_SIZE", "8"),
           # capacity, not policy: two keys send far more than server.rate_limit_per_minute allows one key
           "CITELINE_SERVER__RATE_LIMIT_PER_MINUTE": os.environ.get("CITELINE_SERVER__RATE_LIMIT_PER_MINUTE", "0")}
    settings = Settings.load(root / "citeline.toml", database_url=url, database={"namespace": namespace})
    with Citeline(settings) as cl:
        cl.sync()
        cl.admin.import_principals(root / "principals.toml", actor="load-bench")
        keys = {u: cl.admin.create_key(u, actor="load-bench").secret for u in ("alice", "bob")}
    return env, keys


async def sample_pool(base: str, stop: asyncio.Event, out: list[dict[str, float]]) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        while not stop.is_set():
            text = (await client.get(f"{base}/metrics")).text
            out.append({m: float(v) for m, v in re.findall(r"^citeline_db_pool_(\w+) ([\d.e+]+)$", text, re.M)})
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.25)


async def run_level(base: str, keys: dict[str, str], concurrency: int, duration: float, unique: bool) -> dict:
    results: list[tuple[float, int, dict]] = []
    deadline = time.perf_counter() + duration
    stop = asyncio.Event()
    pool: list[dict[str, float]] = []

    async def worker(i: int) -> None:
        user = ("alice", "bob")[i % 2]
        headers = {"Authorization": f"Bearer {keys[user]}"}
        n = i
        async with httpx.AsyncClient(timeout=60, headers=headers) as client:
            while time.perf_counter() < deadline:
                q = QUESTIONS[n % len(QUESTIONS)]
                if unique:  # every question text new: no help from the server's cache of question vectors
                    q = f"{q} (case {n})"
                n += concurrency
                t0 = time.perf_counter()
                try:
                    r = await client.post(f"{base}/v1/ask", json={"question": q})
                    body = r.json() if r.status_code == 200 else {}
                    stages = dict(body.get("latency_ms", {}))
                    timing = re.search(r"app;dur=([\d.]+)", r.headers.get("server-timing", ""))
                    if timing:
                        stages["in_server_ms"] = float(timing.group(1))
                    results.append(((time.perf_counter() - t0) * 1000, r.status_code, stages))
                except httpx.HTTPError:
                    results.append(((time.perf_counter() - t0) * 1000, 0, {}))

    sampler = asyncio.create_task(sample_pool(base, stop, pool))
    t0 = time.perf_counter()
    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    elapsed = time.perf_counter() - t0
    stop.set()
    await sampler
    ok = [r for r in results if r[1] == 200]

    def pct(xs: list[float]) -> dict[str, float]:
        return {"p50": round(float(np.percentile(xs, 50)), 1), "p95": round(float(np.percentile(xs, 95)), 1)} \
            if xs else {}

    stages = sorted({k for r in ok for k in r[2]} - {"in_server_ms"})
    overhead = [r[2]["total_ms"] + r[2]["auth_ms"] - r[2].get("generate_ms", 0.0) for r in ok]
    return {
        "concurrency": concurrency, "duration_s": round(elapsed, 1), "requests": len(results),
        "requests_per_s": round(len(results) / elapsed, 1), "errors": len(results) - len(ok),
        "client_ms": pct([r[0] for r in ok]),
        "server_stage_ms": {s.removesuffix("_ms"): pct([r[2][s] for r in ok if s in r[2]]) for s in stages},
        "server_overhead_ms": pct(overhead),
        "in_server_ms": pct([r[2]["in_server_ms"] for r in ok if "in_server_ms" in r[2]]),
        "refused_share": round(sum(1 for r in ok if "generate_ms" not in r[2]) / max(len(ok), 1), 3),
        "pool": {"size_max": max((p.get("size", 0) for p in pool), default=0),
                 "available_min": min((p.get("available", 0) for p in pool), default=0),
                 "waiting_max": max((p.get("requests_waiting", 0) for p in pool), default=0)},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[20, 50])
    parser.add_argument("--duration", type=float, default=30)
    parser.add_argument("--warmup", type=float, default=5)
    parser.add_argument("--unique", action="store_true", help="make every question text unique (defeats the "
                        "question-vector cache; the default repeats the 66 questions, as real support traffic does)")
    args = parser.parse_args()
    url = database_url()
    tmp = Path(tempfile.mkdtemp(prefix="citeline-load-"))
    env, keys = setup(tmp, url)
    port = 18000 + os.getpid() % 1000
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
        asyncio.run(run_level(base, keys, 4, args.warmup, unique=True))
        levels = [asyncio.run(run_level(base, keys, c, args.duration, args.unique)) for c in args.concurrency]
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(
                sql.Identifier(env["CITELINE_DATABASE__NAMESPACE"])))
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps({"benchmark": "load", "backend": "extractive", "questions": len(QUESTIONS),
                      "unique_questions": args.unique, "levels": levels,
                      "machine": machine(), "revision": git_revision()}, indent=2))


if __name__ == "__main__":
    main()
