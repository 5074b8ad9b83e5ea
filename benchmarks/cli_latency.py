"""Wall time of the admin commands on the embedded default (issue 15: `principals list` took 18 s).

For each tree measured (the working tree, and with ``--before COMMIT`` a ``git archive`` of that commit), a
copy of examples/acme with its own home (its own embedded PostgreSQL) is synced once, its principals
imported, and then each command runs ``--runs`` times as a fresh process, timed from start to exit
(the embedded server starts with the first process that needs it and stops with the last, so each run
includes it, as a user's command does):
``principals list``, ``keys create alice``, ``sources status``. The median is reported with the machine's
load average before and after. The CLI is started as ``python -c`` importing citeline from the tree measured
(:func:`_common.use_this_tree`), so the older commit runs with the same venv::

    .venv/bin/python benchmarks/cli_latency.py --before a187758 > /tmp/cli-latency.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import REPO, git_revision

COMMANDS = (("principals", "list"), ("keys", "create", "alice"), ("sources", "status"))
BOOT = ("import sys; sys.path.insert(0, {bench!r}); import _common; _common.use_this_tree(); "
        "from citeline.cli import main; sys.argv = ['citeline', *sys.argv[1:]]; main()")


def export(commit: str, into: Path) -> Path:
    """``git archive COMMIT`` unpacked into ``into``, with this run's benchmark helpers."""
    into.mkdir(parents=True)
    archive = subprocess.run(["git", "archive", commit], cwd=REPO, capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    for name in ("_common.py", "cli_latency.py"):
        shutil.copy(REPO / "benchmarks" / name, into / "benchmarks" / name)
    return into


def cli(tree: Path, config: Path, *args: str) -> float:
    """One CLI run in a fresh process; its wall time in seconds."""
    env = {**os.environ, "CITELINE_CONFIG": str(config), "HF_HUB_OFFLINE": "1"}
    env.pop("CITELINE_DATABASE_URL", None)  # the embedded default
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", BOOT.format(bench=str(tree / "benchmarks")), *args], env=env,
                          capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"`citeline {' '.join(args)}` in {tree} failed:\n{proc.stderr}")
    return elapsed


def measure(tree: Path, work: Path, runs: int) -> dict[str, object]:
    root = work / "acme"
    shutil.copytree(tree / "examples" / "acme", root, ignore=shutil.ignore_patterns(".citeline"))
    config = root / "citeline.toml"
    setup = {"sync": cli(tree, config, "sync"),
             "principals import": cli(tree, config, "principals", "import", str(root / "principals.toml"))}
    load_before = os.getloadavg()
    times = {" ".join(c): [cli(tree, config, *c) for _ in range(runs)] for c in COMMANDS}
    return {"median_s": {c: round(statistics.median(t), 2) for c, t in times.items()},
            "runs_s": {c: [round(x, 2) for x in t] for c, t in times.items()},
            "setup_s": {k: round(v, 1) for k, v in setup.items()},
            "load_before": [round(x, 2) for x in load_before], "load_after": [round(x, 2) for x in os.getloadavg()]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", metavar="COMMIT", help="also measure this commit (git archive), first")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory(prefix="citeline-cli-latency-") as tmp:
        work = Path(tmp)
        work.chmod(0o755)  # the embedded server runs as another user
        if args.before:
            old = export(args.before, work / "before-tree")
            results[args.before] = measure(old, work / "before", args.runs)
        results[f"{git_revision()}+working tree"] = measure(REPO, work / "after", args.runs)
    print(json.dumps({"cores": os.cpu_count(), "results": results}, indent=2))


if __name__ == "__main__":
    main()
