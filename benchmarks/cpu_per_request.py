"""The server's own CPU time per ``POST /v1/ask``: less disturbed by other load on the machine than requests/s.

    CONC=20 N=1500 python benchmarks/cpu_per_request.py

Sets up the Acme example as benchmarks/load_bench.py does (its own namespace, alice and bob with keys, the
extractive backend), starts `citeline serve`, sends 40 warm-up requests, then N requests from CONC client threads,
and prints one JSON line: the server process's user+system CPU time (psutil) and the wall time per request, and
the answers' median stage latencies. To compare two commits, run it from a `git archive` of each, alternating.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import psutil
import psycopg
from _common import database_url
from load_bench import QUESTIONS, setup
from psycopg import sql


def main() -> None:
    n, conc = int(os.environ.get("N", "300")), int(os.environ.get("CONC", "1"))
    url = database_url()
    env, keys = setup(Path(tempfile.mkdtemp(prefix="cpu-per-request-")), url)
    port = 19000 + os.getpid() % 1000
    proc = subprocess.Popen([sys.executable, "-c", "from citeline.cli import main; main()", "serve", "--port",
                             str(port), "--log-level", "warning"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                    break
            time.sleep(0.5)
        clients = {u: httpx.Client(timeout=60, headers={"Authorization": f"Bearer {k}"},
                                   limits=httpx.Limits(max_connections=conc)) for u, k in keys.items()}

        def ask(i: int) -> dict[str, float]:
            r = clients[("alice", "bob")[i % 2]].post(f"{base}/v1/ask",
                                                       json={"question": QUESTIONS[i % len(QUESTIONS)]})
            r.raise_for_status()
            return dict(r.json().get("latency_ms", {}))

        for i in range(40):
            ask(i)
        server = psutil.Process(proc.pid)
        c0, t0 = server.cpu_times(), time.perf_counter()
        with ThreadPoolExecutor(conc) as pool:
            stages = list(pool.map(ask, range(n)))
        c1, wall = server.cpu_times(), time.perf_counter() - t0
        names = sorted({k for s in stages for k in s})
        print(json.dumps({
            "clients": conc, "requests": n,
            "cpu_ms_per_request": round((c1.user - c0.user + c1.system - c0.system) / n * 1000, 2),
            "wall_ms_per_request": round(wall / n * 1000, 2),
            "stages_p50_ms": {k: round(float(np.median([s.get(k, 0.0) for s in stages])), 2) for k in names},
            "load_average": os.getloadavg()}))
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(
                sql.Identifier(env["CITELINE_DATABASE__NAMESPACE"])))


if __name__ == "__main__":
    main()
