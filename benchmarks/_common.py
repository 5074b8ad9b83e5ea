"""Shared set-up for the benchmarks: the embedded database, the real embedder, machine facts."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
SCIFACT = REPO.parent / "shared" / "benchmarks" / "scifact"
HOME = Path(os.environ.get("CITELINE_BENCH_HOME", "/tmp/citeline-bench"))


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    import torch

    return (f"{cpu}, {os.cpu_count()} cores, {mem:.0f} GiB RAM, {platform.system()} {platform.release()}, "
            f"Python {platform.python_version()}, torch {torch.__version__} ({torch.get_num_threads()} threads)")


def database_url() -> str:
    url = os.environ.get("CITELINE_DATABASE_URL")
    if url:
        return url
    from citeline.db.local import start_embedded

    HOME.mkdir(parents=True, exist_ok=True)
    HOME.chmod(0o755)
    return start_embedded(HOME)


def git_revision() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def use_this_tree() -> str | None:
    """Import citeline from the tree this file lives in, even when the venv's editable install points at
    another checkout (a ``git archive`` of an older commit, to measure it side by side with the working tree).
    Call before importing citeline; returns the installed root that was replaced, or None."""
    import sys

    for finder in sys.meta_path:
        mapping = getattr(sys.modules.get(getattr(finder, "__module__", "")), "MAPPING", None)
        if not isinstance(mapping, dict) or "citeline" not in mapping:
            continue
        installed = Path(mapping["citeline"]).parents[1]  # <root>/src/citeline
        if installed == REPO:
            return None
        for name, path in mapping.items():
            mapping[name] = str(REPO / Path(path).relative_to(installed))
        return str(installed)
    return None
