"""The adapter registry: versioned team LoRA adapters in the database, and which one each team uses now.

A registered adapter is an immutable copy of a PEFT LoRA folder under the registry's store
(``<home>/adapters/<served name>/``: vLLM pages adapters from disk, so the folder must stay in place), a row
in ``adapters`` (migration 0004) and a *served name* ``<name>-<version>`` where the version is the first 12
hex digits of the sha256 of the adapter's config and weights. A re-trained adapter therefore never reuses an
old one's name, and registering the same files twice is a no-op.

Statuses: ``registered`` (checked, not serving), ``active`` (the team's current adapter, at most one per
team: a partial unique index), ``retired`` (replaced or withdrawn, kept for the audit trail). Every
registration runs :func:`citeline.lora.manifest.preflight` against the base model the servers run; an adapter
with any problem is refused with all of them listed.

:class:`AdapterRouter` answers "which model does a request from this principal use": the team's active
adapter (cached for ``ttl_s`` so a request costs no extra query), the base model when the team has none
(and the answer says so), and refuses an adapter of another team (:class:`~citeline.errors.ForbiddenError`).

Hot-swapping adapters on running model servers lives in :mod:`citeline.lora.rollout`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg

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
from citeline.db import Database
from citeline.domain import Principal
from citeline.errors import AdapterError, ForbiddenError

__all__ = [
    "AdapterRegistry",
    "AdapterRouter",
    "AdapterVersion",
    "ModelChoice",
    "adapter_version",
    "evaluation_metrics",
    "promotion_problems",
]

_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
_COLUMNS = ("id, name, team, version, served_name, path, base_model, base_fingerprint, rank, target_modules, "
            "status, metrics, created_at, created_by, promoted_at")


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


def _row(r: tuple[Any, ...]) -> AdapterVersion:
    return AdapterVersion(r[0], r[1], r[2], r[3], r[4], Path(r[5]), r[6], r[7], r[8], tuple(r[9]), r[10],
                          r[11] or {}, r[12], r[13], r[14])


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
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def evaluation_metrics(adapter_dir: Path) -> dict[str, float]:
    """The numbers of ``citeline adapter eval`` (``citeline_eval.json``) that the promotion gate reads."""
    from citeline.lora.evaluation import EvalReport

    try:
        report = EvalReport.read(adapter_dir)
    except (ValueError, KeyError, TypeError) as exc:
        raise AdapterError(f"{adapter_dir}/citeline_eval.json is malformed ({exc!r}): run `citeline adapter eval` "
                           "again") from exc
    if report is None:
        return {}
    scores = report.scores
    out = {"format_compliance": scores["adapter"].compliance, "baseline_format_compliance":
           scores["baseline"].compliance, "base_format_compliance": scores["base"].compliance,
           "similarity": scores["adapter"].similarity, "baseline_similarity": scores["baseline"].similarity}
    if report.grounding is not None:
        out.update(grounding=report.grounding.adapter_share, baseline_grounding=report.grounding.base_share)
    return {k: round(float(v), 4) for k, v in out.items()}


def promotion_problems(adapter: AdapterVersion) -> list[str]:
    """Why an adapter may not become its team's active one (empty: it may).

    When the registered folder carries ``citeline adapter eval``'s report (``citeline_eval.json``), the
    evaluation's own rule decides (:func:`citeline.lora.evaluation.decide_promotion`: beat the prompting
    baseline on format compliance, with grounding measured and not worse). Otherwise the metrics recorded
    with the adapter must show the same: compliance above the baseline's, grounding (when given) not worse.
    """
    from citeline.lora.evaluation import EvalReport, decide_promotion

    report = EvalReport.read(adapter.path)
    if report is not None:
        decision = decide_promotion(report)
        return [] if decision.promote else list(decision.reasons)
    m = adapter.metrics
    have = {k for k in ("format_compliance", "baseline_format_compliance") if isinstance(m.get(k), int | float)}
    if len(have) < 2:
        return [f"{adapter.served_name} has no evaluation results (format_compliance and "
                "baseline_format_compliance in its manifest): run `citeline adapter eval` first, or --force"]
    problems = []
    if float(m["format_compliance"]) <= float(m["baseline_format_compliance"]):
        problems.append(f"format compliance {float(m['format_compliance']):.3f} does not beat the prompting "
                        f"baseline's {float(m['baseline_format_compliance']):.3f}")
    if isinstance(m.get("grounding"), int | float) and isinstance(m.get("baseline_grounding"), int | float):
        if float(m["grounding"]) < float(m["baseline_grounding"]):
            problems.append(f"grounding {float(m['grounding']):.3f} is worse than the base model's "
                            f"{float(m['baseline_grounding']):.3f}")
    return problems


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
                 actor: str, conn: psycopg.Connection | None = None) -> tuple[AdapterVersion, bool]:
        """Check, copy and record an adapter folder; returns (the version, whether it is new).

        ``conn``: the caller's transaction (the row then commits with whatever else it writes there).
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
        dest = self._copy(source, served)
        try:
            with self._tx(conn) as c:
                row = c.execute(
                    f"INSERT INTO adapters (name, team, version, served_name, path, base_model, base_fingerprint, "
                    f"rank, target_modules, metrics, created_by) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, "
                    f"%s::jsonb, %s) RETURNING {_COLUMNS}",
                    (name, team, version, served, str(dest), manifest.base_model if manifest else base_model_dir.name,
                     base_model_fingerprint(base_model_dir), int(config.get("r", 0)),
                     list(config.get("target_modules") or []),
                     json.dumps({**(dict(manifest.metrics) if manifest else {}), **evaluation_metrics(source)}),
                     actor)).fetchone()
        except psycopg.errors.UniqueViolation:
            existing = self.get(served)
            assert existing is not None
            return existing, False
        return _row(row), True

    def _copy(self, source: Path, served: str) -> Path:
        """Copy the folder into the store atomically (a half-copied folder never has the final name).

        Files are read without following symlinks, and the copy must hash to ``served``'s version: a file
        swapped since the preflight (for a link, or for other bytes) fails the registration and nothing is kept.
        """
        dest = self.store / served
        version = served.rsplit("-", 1)[1]
        if (dest / ADAPTER_WEIGHTS).is_file() and adapter_version(dest)[:12] == version:
            return dest
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
        except (OSError, ValueError, AdapterError) as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            if isinstance(exc, AdapterError):
                raise
            raise AdapterError(f"adapter {source} cannot be copied into the store: {exc}") from None
        if dest.exists():
            shutil.rmtree(dest)
        tmp.rename(dest)
        return dest

    def get(self, served_name: str) -> AdapterVersion | None:
        with self.db.writer() as conn:
            row = conn.execute(f"SELECT {_COLUMNS} FROM adapters WHERE served_name = %s", (served_name,)).fetchone()
        return _row(row) if row else None

    def require(self, served_name: str) -> AdapterVersion:
        found = self.get(served_name)
        if found is None:
            raise AdapterError(f"no adapter {served_name!r} is registered: see `citeline adapter list`")
        return found

    def list(self, *, team: str | None = None, status: str | None = None) -> list[AdapterVersion]:
        with self.db.writer() as conn:
            rows = conn.execute(
                f"SELECT {_COLUMNS} FROM adapters WHERE (%(team)s::text IS NULL OR team = %(team)s) "
                "AND (%(status)s::text IS NULL OR status = %(status)s) ORDER BY team, created_at, id",
                {"team": team, "status": status}).fetchall()
        return [_row(r) for r in rows]

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
            row = conn.execute("SELECT team, status FROM adapters WHERE served_name = %s FOR UPDATE",
                               (served_name,)).fetchone()
            if row is None:
                raise AdapterError(f"no adapter {served_name!r} is registered: see `citeline adapter list`")
            team, status = row
            if status == "active":
                return None
            previous = conn.execute(f"UPDATE adapters SET status = 'retired' WHERE team = %s AND status = 'active' "
                                    f"RETURNING {_COLUMNS}", (team,)).fetchone()
            conn.execute("UPDATE adapters SET status = 'active', promoted_at = now() WHERE served_name = %s",
                         (served_name,))
            if audit is not None:
                audit(conn, _row(previous) if previous else None)
        return _row(previous) if previous else None

    def retire(self, served_name: str, *, conn: psycopg.Connection | None = None) -> AdapterVersion:
        """Withdraw an adapter (its team falls back to the base model if it was active)."""
        with self._tx(conn) as c:
            row = c.execute(f"UPDATE adapters SET status = 'retired' WHERE served_name = %s RETURNING {_COLUMNS}",
                               (served_name,)).fetchone()
        if row is None:
            raise AdapterError(f"no adapter {served_name!r} is registered: see `citeline adapter list`")
        return _row(row)


@dataclass(frozen=True)
class ModelChoice:
    """The model a request generates with, and why."""

    model: str  # what the backend is asked for: the base model's name or an adapter's served name
    adapter: AdapterVersion | None = None
    note: str | None = None  # set when the team's adapter is not used (falls back to the base model)


@dataclass
class _Cache:
    at: float = -1e9
    by_team: dict[str, AdapterVersion] = field(default_factory=dict)
    by_served: dict[str, AdapterVersion] = field(default_factory=dict)


class AdapterRouter:
    """Picks each request's model from the registry: the team's active adapter, else the base model."""

    def __init__(self, registry: AdapterRegistry, *, ttl_s: float = 1.0) -> None:
        self.registry = registry
        self.ttl_s = ttl_s
        self._cache = _Cache()
        self._lock = threading.Lock()

    def _snapshot(self) -> _Cache:
        now = time.monotonic()
        with self._lock:
            if now - self._cache.at >= self.ttl_s:
                every = self.registry.list()
                self._cache = _Cache(now, {a.team: a for a in every if a.status == "active"},
                                     {a.served_name: a for a in every})
            return self._cache

    def invalidate(self) -> None:
        with self._lock:
            self._cache = _Cache()

    def may_use(self, principal: Principal, model: str) -> bool:
        """False for an adapter of another team (or a retired one); True for anything the registry does not own."""
        adapter = self._snapshot().by_served.get(model)
        return adapter is None or (adapter.team == principal.team and adapter.status != "retired")

    def choose(self, principal: Principal, requested: str | None, base_model: str) -> ModelChoice:
        """The team's active adapter when ``requested`` names none; a named adapter only for its own team."""
        cache = self._snapshot()
        if requested in (None, "", "citeline", base_model):
            if requested == base_model:
                return ModelChoice(base_model)
            adapter = cache.by_team.get(principal.team) if principal.team else None
            if adapter is None:
                who = f"team {principal.team!r}" if principal.team else f"{principal.user} (no team)"
                return ModelChoice(base_model, note=f"{who} has no active adapter; answered by the base model")
            return ModelChoice(adapter.served_name, adapter)
        adapter = cache.by_served.get(requested)
        if adapter is None:
            return ModelChoice(requested)  # not an adapter citeline manages: the backend decides
        if adapter.team != principal.team:
            raise ForbiddenError(f"adapter {requested!r} belongs to team {adapter.team!r}; "
                                 f"{principal.user} is in team {principal.team!r} and may only use its own team's "
                                 "adapters")
        if adapter.status == "retired":
            raise ForbiddenError(f"adapter {requested!r} is retired; ask without a model to use team "
                                 f"{adapter.team!r}'s current adapter")
        return ModelChoice(adapter.served_name, adapter)
