"""The adapter registry: versioned team LoRA adapters in the database, and which one each team uses now.

A registered adapter is an immutable copy of a PEFT LoRA folder under the registry's store
(``<home>/adapters/<served name>/``: vLLM pages adapters from disk, so the folder must stay in place), a row
in ``adapters`` (migration 0004) and a *served name* ``<name>-<version>`` where the version is the first 12
hex digits of the sha256 of the adapter's config and weights. A re-trained adapter therefore never reuses an
old one's name, and registering the same files twice is a no-op.

The store is also what vLLM's filesystem LoRA resolver reads (``VLLM_LORA_RESOLVER_CACHE_DIR``): a request
naming ``<served name>`` loads ``<store>/<served name>/`` on a server that has not loaded it yet (a new or
restarted replica), but only if the folder's ``base_model_name_or_path`` equals the base model vLLM was
started with (``vllm serve MODEL``). Adapters are often trained elsewhere (another path, a hub id), so the
stored copy records the base as vLLM names it (``served_base``; default the base model folder, which is
``adapters.base_model_path``: the deploy files start vLLM on that same path) in its
``adapter_config.json``. The version stays the hash of the files as given; the copy is checked by preflight
after that edit and never changes once it has its final name.

Statuses: ``registered`` (checked, not serving), ``active`` (the team's current adapter, at most one per
team: a partial unique index), ``retired`` (replaced or withdrawn, kept for the audit trail). Every
registration runs :func:`citeline.lora.manifest.preflight` against the base model the servers run; an adapter
with any problem is refused with all of them listed.

Which adapter a request uses is :mod:`citeline.lora.routing`; when an adapter may be promoted,
:mod:`citeline.lora.promotion`; hot-swapping adapters on running model servers, :mod:`citeline.lora.rollout`.
"""

from __future__ import annotations

import contextlib
import filecmp
import functools
import hashlib
import json
import re
import shutil
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg.rows import dict_row, kwargs_row

from citeline.db import Database
from citeline.errors import AdapterError
from citeline.lora.manifest import (
    ADAPTER_CONFIG,
    ADAPTER_FILES,
    ADAPTER_WEIGHTS,
    AdapterManifest,
    base_model_fingerprint,
    open_regular,
    preflight,
    read_json,
)
from citeline.lora.promotion import evaluation_metrics
from citeline.lora.soft_prompt import VLLM_REFUSAL, is_soft_prompt

__all__ = ["AdapterRegistry", "AdapterVersion", "adapter_version"]

_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
_COLUMNS = ("id, name, team, version, served_name, path, base_model, base_fingerprint, rank, target_modules, "
            "status, metrics, created_at, created_by, promoted_at")
# the registry's SQL (each returning _COLUMNS reads into an AdapterVersion by column name)
_INSERT = (f"INSERT INTO adapters (name, team, version, served_name, path, base_model, base_fingerprint, rank, "
           f"target_modules, metrics, created_by) VALUES (%(name)s, %(team)s, %(version)s, %(served)s, %(path)s, "
           f"%(base_model)s, %(fingerprint)s, %(rank)s, %(modules)s, %(metrics)s::jsonb, %(actor)s) "
           f"RETURNING {_COLUMNS}")
_BY_SERVED_NAME = f"SELECT {_COLUMNS} FROM adapters WHERE served_name = %s"
_LIST = (f"SELECT {_COLUMNS} FROM adapters WHERE (%(team)s::text IS NULL OR team = %(team)s) "
         "AND (%(status)s::text IS NULL OR status = %(status)s) ORDER BY team, created_at, id")
_LOCK_FOR_FLIP = "SELECT team, status FROM adapters WHERE served_name = %s FOR UPDATE"
_RETIRE_ACTIVE = f"UPDATE adapters SET status = 'retired' WHERE team = %s AND status = 'active' RETURNING {_COLUMNS}"
_ACTIVATE = "UPDATE adapters SET status = 'active', promoted_at = now() WHERE served_name = %s"
_RETIRE = f"UPDATE adapters SET status = 'retired' WHERE served_name = %s RETURNING {_COLUMNS}"
_METRICS = f"UPDATE adapters SET metrics = metrics || %s::jsonb WHERE served_name = %s RETURNING {_COLUMNS}"


@dataclass(frozen=True)
class AdapterVersion:
    id: int
    name: str
    team: str
    version: str
    served_name: str
    path: Path
    base_model: str
    base_fingerprint: str
    rank: int
    target_modules: tuple[str, ...]
    status: str
    metrics: Mapping[str, Any]
    created_at: datetime
    created_by: str
    promoted_at: datetime | None

    def as_dict(self) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in self.__dataclass_fields__}
        out.update(path=str(self.path), target_modules=list(self.target_modules), metrics=dict(self.metrics),
                   created_at=self.created_at.isoformat(),
                   promoted_at=self.promoted_at.isoformat() if self.promoted_at else None)
        return out


def _version(*, path: str, target_modules: list[str], metrics: Mapping[str, Any] | None,
             **columns: Any) -> AdapterVersion:
    """An ``adapters`` row (selected as ``_COLUMNS``) as an :class:`AdapterVersion`: the row factory."""
    return AdapterVersion(path=Path(path), target_modules=tuple(target_modules), metrics=metrics or {}, **columns)


_ROWS = kwargs_row(_version)


def adapter_version(adapter_dir: Path) -> str:
    """sha256 over the adapter's config and weights (the manifest's metrics do not change the version).

    The files are read without following symlinks: :class:`AdapterError` naming one that is not a regular file.
    """
    h = hashlib.sha256()
    for name in (ADAPTER_CONFIG, ADAPTER_WEIGHTS):
        path = Path(adapter_dir) / name
        h.update(name.encode() + b"\0")
        try:
            f = open_regular(path)
        except ValueError as exc:
            raise AdapterError(str(exc)) from None
        with f:
            for block in iter(functools.partial(f.read, 1 << 20), b""):
                h.update(block)
    return h.hexdigest()


class AdapterRegistry:
    """Versioned adapters in the database; files copied into ``store`` (one folder per served name)."""

    def __init__(self, db: Database, store: Path) -> None:
        self.db = db
        self.store = Path(store)

    @contextlib.contextmanager
    def _tx(self, conn: psycopg.Connection | None) -> Iterator[psycopg.Connection]:
        """The caller's transaction (a savepoint in it, so a failed statement does not abort it), or our own."""
        if conn is None:
            with self.db.writer() as own:
                yield own
        else:
            with conn.transaction():
                yield conn

    def register(self, source: Path, *, team: str, name: str | None, base_model_dir: Path, max_rank: int,
                 actor: str, conn: psycopg.Connection | None = None, served_base: str | None = None,
                 serves_soft_prompts: bool = False) -> tuple[AdapterVersion, bool]:
        """Check, copy and record an adapter folder; returns (the version, whether it is new).

        ``serves_soft_prompts``: the deployment's model servers serve soft prompts (the embedded backend in
        process); otherwise (vLLM) a soft prompt is refused (:data:`citeline.lora.soft_prompt.VLLM_REFUSAL`).

        ``conn``: the caller's transaction (the row then commits with whatever else it writes there).
        ``served_base``: the base model as vLLM was started with it (``vllm serve MODEL``), written into the
        stored copy's ``base_model_name_or_path`` for vLLM's filesystem resolver; default ``str(base_model_dir)``.
        """
        source = Path(source).resolve()
        name = name or team
        for what, value in (("team", team), ("name", name)):
            if not _NAME.match(value):
                raise AdapterError(f"adapter {what} {value!r}: use lowercase letters, digits, '.', '_' and '-'")
        problems = preflight(source, base_model_dir=base_model_dir, max_rank=max_rank)
        if problems:
            listed = "\n".join(f"  - {p.kind.value}: {p.message}" for p in problems)
            raise AdapterError(f"adapter {source} cannot be registered; it would not load on the model server:\n"
                               f"{listed}")
        version = adapter_version(source)[:12]
        served = f"{name}-{version}"
        if (existing := self.get(served)) is not None:
            if existing.team != team:
                raise AdapterError(f"{served} is already registered for team {existing.team!r}")
            return existing, False
        try:
            manifest = AdapterManifest.read(source)
        except ValueError as exc:  # preflight reports it too; kept for a clear message
            raise AdapterError(str(exc)) from exc
        try:
            config = read_json(source / ADAPTER_CONFIG)  # preflight checked it; a swap since is refused here
        except (OSError, ValueError) as exc:
            raise AdapterError(f"adapter {source} cannot be registered: {exc}") from None
        if is_soft_prompt(config) and not serves_soft_prompts:
            raise AdapterError(f"adapter {source} is a soft prompt and cannot be registered for this deployment: "
                               f"{VLLM_REFUSAL}")
        dest = self._copy(source, served, served_base=served_base or str(base_model_dir),
                          base_model_dir=base_model_dir, max_rank=max_rank)
        try:
            with self._tx(conn) as c:
                row = c.cursor(row_factory=_ROWS).execute(_INSERT, {
                    "name": name, "team": team, "version": version, "served": served, "path": str(dest),
                    "base_model": manifest.base_model if manifest else base_model_dir.name,
                    "fingerprint": base_model_fingerprint(base_model_dir), "rank": int(config.get("r", 0)),
                    "modules": list(config.get("target_modules") or []),
                    "metrics": json.dumps({**(dict(manifest.metrics) if manifest else {}),
                                           **evaluation_metrics(source)}),
                    "actor": actor}).fetchone()
        except psycopg.errors.UniqueViolation:
            existing = self.get(served)
            assert existing is not None
            return existing, False
        assert row is not None
        return row, True

    def _copy(self, source: Path, served: str, *, served_base: str, base_model_dir: Path, max_rank: int) -> Path:
        """Copy the folder into the store atomically (a half-copied folder never has the final name).

        Files are read without following symlinks, and the copy must hash to ``served``'s version: a file
        swapped since the preflight (for a link, or for other bytes) fails the registration and nothing is kept.
        The copy then records ``served_base`` and must still pass preflight; a folder already in place with the
        same files is kept as it is (a server may be reading it).
        """
        dest = self.store / served
        version = served.rsplit("-", 1)[1]
        self.store.mkdir(parents=True, exist_ok=True)
        tmp = self.store / f".{served}.{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            for fname in ADAPTER_FILES:
                try:
                    with open_regular(source / fname) as src, (tmp / fname).open("xb") as out:
                        shutil.copyfileobj(src, out, 1 << 20)
                except FileNotFoundError:
                    continue
            if adapter_version(tmp)[:12] != version:
                raise AdapterError(f"adapter {source} changed while it was being registered: register it again")
            _record_served_base(tmp, served_base, base_model_dir=base_model_dir, max_rank=max_rank)
        except (OSError, ValueError, AdapterError) as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            if isinstance(exc, AdapterError):
                raise
            raise AdapterError(f"adapter {source} cannot be copied into the store: {exc}") from None
        if _same_files(tmp, dest):
            shutil.rmtree(tmp)
            return dest
        if dest.exists():  # the same files, recorded for another base: swapped by renames, never half-written
            old = self.store / f".{served}.old.{uuid.uuid4().hex[:8]}"
            dest.rename(old)
            tmp.rename(dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(dest)
        return dest

    def get(self, served_name: str) -> AdapterVersion | None:
        with self.db.writer() as conn:
            return conn.cursor(row_factory=_ROWS).execute(_BY_SERVED_NAME, (served_name,)).fetchone()

    def require(self, served_name: str) -> AdapterVersion:
        found = self.get(served_name)
        if found is None:
            raise AdapterError(f"no adapter {served_name!r} is registered: see `citeline adapter list`")
        return found

    def list(self, *, team: str | None = None, status: str | None = None) -> list[AdapterVersion]:
        with self.db.writer() as conn:
            return conn.cursor(row_factory=_ROWS).execute(_LIST, {"team": team, "status": status}).fetchall()

    def active(self, team: str) -> AdapterVersion | None:
        found = self.list(team=team, status="active")
        return found[0] if found else None

    def active_by_team(self) -> dict[str, AdapterVersion]:
        return {a.team: a for a in self.list(status="active")}

    def activate(self, served_name: str, *,
                 audit: Callable[[psycopg.Connection, AdapterVersion | None], None] | None = None
                 ) -> AdapterVersion | None:
        """Make ``served_name`` its team's active adapter in one transaction; returns the one it replaced.

        ``audit(conn, previous)`` runs in that transaction after the flip: if it raises, nothing changed.
        """
        with self.db.writer() as conn:
            target = conn.cursor(row_factory=dict_row).execute(_LOCK_FOR_FLIP, (served_name,)).fetchone()
            if target is None:
                raise AdapterError(f"no adapter {served_name!r} is registered: see `citeline adapter list`")
            if target["status"] == "active":
                return None
            previous = conn.cursor(row_factory=_ROWS).execute(_RETIRE_ACTIVE, (target["team"],)).fetchone()
            conn.execute(_ACTIVATE, (served_name,))
            if audit is not None:
                audit(conn, previous)
        return previous

    def record_evaluation(self, served_name: str, *, conn: psycopg.Connection | None = None) -> AdapterVersion:
        """Record the numbers of the stored copy's ``citeline_eval.json`` (``adapter eval`` of a served name)."""
        adapter = self.require(served_name)
        with self._tx(conn) as c:
            row = c.cursor(row_factory=_ROWS).execute(_METRICS, (json.dumps(evaluation_metrics(adapter.path)),
                                                                 served_name)).fetchone()
        assert row is not None
        return row

    def retire(self, served_name: str, *, conn: psycopg.Connection | None = None) -> AdapterVersion:
        """Withdraw an adapter (its team falls back to the base model if it was active)."""
        with self._tx(conn) as c:
            row = c.cursor(row_factory=_ROWS).execute(_RETIRE, (served_name,)).fetchone()
        if row is None:
            raise AdapterError(f"no adapter {served_name!r} is registered: see `citeline adapter list`")
        return row


def _record_served_base(copy: Path, served_base: str, *, base_model_dir: Path, max_rank: int) -> None:
    """Write ``served_base`` into the copy's base_model_name_or_path; the copy must then pass preflight."""
    config = read_json(copy / ADAPTER_CONFIG)
    if config.get("base_model_name_or_path") != served_base:
        config["base_model_name_or_path"] = served_base
        (copy / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    if problems := preflight(copy, base_model_dir=base_model_dir, max_rank=max_rank):
        listed = "; ".join(f"{p.kind.value}: {p.message}" for p in problems)
        raise AdapterError(f"the stored copy, recording the base as {served_base!r} for vLLM's LoRA resolver, "
                           f"fails preflight ({listed}): serve the base from a path or hub id ending in "
                           f"{base_model_dir.name!r} (the deploy files run `vllm serve` on adapters.base_model_path)")


def _same_files(a: Path, b: Path) -> bool:
    """Whether folder ``b`` holds exactly ``a``'s adapter files with the same bytes."""
    if not b.is_dir():
        return False
    names = [n for n in ADAPTER_FILES if (a / n).exists() or (b / n).exists()]
    return all((a / n).is_file() and (b / n).is_file() and filecmp.cmp(a / n, b / n, shallow=False)
               for n in names)
