"""An exclusive advisory lock between processes, for one-time conversions into shared caches."""

from __future__ import annotations

import contextlib
import fcntl
import logging
from collections.abc import Iterator
from pathlib import Path

__all__ = ["file_lock"]

log = logging.getLogger(__name__)


@contextlib.contextmanager
def file_lock(path: Path, what: str) -> Iterator[None]:
    """Hold ``path`` locked (released when the file is closed, even on a crash); ``what`` names the work
    another process is doing if this one has to wait."""
    with open(path, "a+b") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("waiting for another process %s (%s)", what, path)
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
