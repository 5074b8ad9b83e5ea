"""Hot-swapping registered adapters on running model servers.

Production serving is vLLM's OpenAI server started with ``--enable-lora`` and
``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True``; ``citeline model-server`` exposes the same runtime API for the
embedded backend. :class:`ReplicaClient` speaks that API (``GET /v1/models``, ``POST /v1/load_lora_adapter``,
``POST /v1/unload_lora_adapter``) and is an :class:`~citeline.contracts.generator.AdapterHost`, exactly like the
embedded backend itself, so every operation here works on a remote replica or in process:

* :func:`reconcile` makes one host match the registry: every team's active adapter loaded, retired and
  unknown adapters unloaded (``citeline adapter sync`` runs it for every configured replica; after a vLLM
  restart it puts the adapters back).
* :func:`promote` replaces a team's adapter with no failed or mixed requests: the new version is loaded on
  every replica under its own versioned name *before* the registry flips (a request picks one served name
  when it starts, and both names are loaded while the flip propagates); the old version is unloaded only
  after ``drain_s`` (longer than the routers' cache and a request's generation time). If any replica cannot
  load the new version, it is unloaded again everywhere and nothing changes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from citeline.contracts.generator import AdapterHost
from citeline.errors import AdapterError, GenerationError
from citeline.lora.manifest import ADAPTER_CONFIG, preflight, read_json
from citeline.lora.promotion import promotion_problems
from citeline.lora.registry import AdapterRegistry, AdapterVersion
from citeline.lora.soft_prompt import VLLM_REFUSAL, is_soft_prompt

__all__ = ["HostReport", "Promotion", "ReplicaClient", "promote", "reconcile"]

log = logging.getLogger(__name__)


class ReplicaClient:
    """One model server's runtime LoRA API (vLLM or ``citeline model-server``), as an AdapterHost."""

    def __init__(self, base_url: str, *, api_key: str | None = None, timeout_s: float = 120.0) -> None:
        root = base_url.rstrip("/")
        self.base_url = root[:-3] if root.endswith("/v1") else root
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout_s)

    def __repr__(self) -> str:
        return f"ReplicaClient({self.base_url!r})"

    @property
    def name(self) -> str:
        return self.base_url

    def close(self) -> None:
        self._http.close()

    def _post(self, path: str, body: dict[str, Any]) -> httpx.Response:
        try:
            return self._http.post(path, json=body)
        except httpx.HTTPError as exc:
            raise GenerationError(f"cannot reach the model server at {self.base_url} ({type(exc).__name__}: {exc}); "
                                  "is it running? (adapters.replicas)") from exc

    def served(self) -> dict[str, str | None]:
        """Every served model id → its parent (``None`` for a base model)."""
        try:
            response = self._http.get("/v1/models")
            response.raise_for_status()
        except httpx.HTTPError as exc:
            raise GenerationError(f"cannot list models at {self.base_url} ({type(exc).__name__}: {exc}); "
                                  "is it running? (adapters.replicas)") from exc
        return {m["id"]: m.get("parent") for m in response.json().get("data", [])}

    def adapters(self) -> dict[str, Path]:
        """Loaded adapters by served name (vLLM's model list gives no paths: ``Path()`` stands in)."""
        return {name: Path() for name, parent in self.served().items() if parent}

    def load_adapter(self, name: str, path: Path) -> None:
        """Ask the server to load the LoRA folder ``path``; a soft prompt is refused here (vLLM cannot serve one)."""
        try:
            soft = is_soft_prompt(read_json(Path(path) / ADAPTER_CONFIG))
        except (OSError, ValueError):
            soft = False  # not readable here (the server's own path): the server checks what it loads
        if soft:
            raise AdapterError(f"{name} from {path} was not sent to {self.base_url}: it is a soft prompt. "
                               f"{VLLM_REFUSAL}")
        response = self._post("/v1/load_lora_adapter", {"lora_name": name, "lora_path": str(Path(path).absolute())})
        if response.status_code == 400 and "already been loaded" in response.text:
            return  # same versioned name = same files: nothing to do
        if response.status_code >= 400:
            raise AdapterError(f"{self.base_url} refused to load {name} from {path}: {response.status_code} "
                               f"{_message(response)}")

    def unload_adapter(self, name: str) -> None:
        response = self._post("/v1/unload_lora_adapter", {"lora_name": name})
        if response.status_code >= 400 and response.status_code != 404:
            raise AdapterError(f"{self.base_url} refused to unload {name}: {response.status_code} "
                               f"{_message(response)}")


def _message(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:300]
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict):
            return str(err.get("message"))[:300]
        return str(body.get("message") or body)[:300]
    return str(body)[:300]


def _host_name(host: AdapterHost) -> str:
    return str(getattr(host, "base_url", None) or getattr(host, "name", None) or type(host).__name__)


@dataclass
class HostReport:
    """What :func:`reconcile` did on one host."""

    host: str
    loaded: list[str] = field(default_factory=list)
    unloaded: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors

    def as_dict(self) -> dict[str, Any]:
        return {"host": self.host, "loaded": self.loaded, "unloaded": self.unloaded, "kept": self.kept,
                "errors": self.errors}


def _checked(adapter: AdapterVersion, base_model_dir: Path | None, max_rank: int | None) -> list[str]:
    """Preflight again before loading (the stored folder must still be complete and fit the server)."""
    if base_model_dir is None or max_rank is None:
        return []
    return [f"{p.kind.value}: {p.message}" for p in preflight(adapter.path, base_model_dir=base_model_dir,
                                                              max_rank=max_rank)]


def reconcile(registry: AdapterRegistry, hosts: Sequence[AdapterHost], *, base_model_dir: Path | None = None,
              max_rank: int | None = None, keep: Sequence[str] = ()) -> list[HostReport]:
    """Make every host serve exactly the active adapters (plus ``keep``, e.g. a version being staged).

    Registered-but-inactive adapters already loaded are left alone (a promotion may be staging them);
    retired ones and names the registry does not know are unloaded. Errors are reported per host, and the
    other hosts are still reconciled.
    """
    every = {a.served_name: a for a in registry.list()}
    wanted = {a.served_name: a for a in every.values() if a.status == "active"}
    for name in keep:
        wanted.setdefault(name, every[name])
    reports = []
    for host in hosts:
        report = HostReport(_host_name(host))
        try:
            loaded = set(host.adapters())
        except GenerationError as exc:
            report.errors.append(str(exc))
            reports.append(report)
            continue
        for name, adapter in sorted(wanted.items()):
            if name in loaded:
                report.kept.append(name)
                continue
            if problems := _checked(adapter, base_model_dir, max_rank):
                report.errors.append(f"{name} failed its preflight and was not loaded: {'; '.join(problems)}")
                continue
            try:
                host.load_adapter(name, adapter.path)
                report.loaded.append(name)
            except (AdapterError, GenerationError) as exc:
                report.errors.append(str(exc))
        for name in sorted(loaded - set(wanted)):
            known = every.get(name)
            if known is not None and known.status == "registered":
                report.kept.append(name)
                continue
            try:
                host.unload_adapter(name)
                report.unloaded.append(name)
            except (AdapterError, GenerationError) as exc:
                report.errors.append(str(exc))
        reports.append(report)
    return reports


@dataclass
class Promotion:
    adapter: AdapterVersion
    previous: AdapterVersion | None
    loaded_on: list[str]
    unloaded_from: list[str]
    load_ms: dict[str, float]
    errors: list[str]

    def as_dict(self) -> dict[str, Any]:
        return {"adapter": self.adapter.served_name, "previous": self.previous.served_name if self.previous else None,
                "loaded_on": self.loaded_on, "unloaded_from": self.unloaded_from, "load_ms": self.load_ms,
                "errors": self.errors}


def promote(registry: AdapterRegistry, hosts: Sequence[AdapterHost], served_name: str, *, drain_s: float,
            force: bool = False, base_model_dir: Path | None = None, max_rank: int | None = None,
            on_flip: Callable[[], None] | None = None, sleep: Callable[[float], None] = time.sleep,
            audit: Callable[[Any, AdapterVersion | None], None] | None = None) -> Promotion:
    """Load ``served_name`` everywhere, make it its team's active adapter, then unload the old version.

    Refuses (``AdapterError``, nothing changed) when the evaluation says the adapter does not beat the
    prompting baseline or the team's active adapter (unless ``force``), when it fails its preflight, or when
    any host cannot load it.
    ``on_flip`` runs right after the registry changed (e.g. to invalidate an in-process router's cache).
    ``audit(conn, previous)`` writes the promotion's audit row in the flip's own transaction: if it fails,
    the team keeps its adapter and the new one is unloaded again.
    """
    adapter = registry.require(served_name)
    if adapter.status == "retired":
        raise AdapterError(f"{served_name} is retired; register the folder again under a new version to use it")
    if not force and (problems := promotion_problems(adapter, registry.active(adapter.team))):
        raise AdapterError(f"{served_name} is not promoted: " + "; ".join(problems) + " (use --force to override)")
    if problems := _checked(adapter, base_model_dir, max_rank):
        raise AdapterError(f"{served_name} failed its preflight: " + "; ".join(problems))
    loaded_on: list[str] = []
    load_ms: dict[str, float] = {}
    for host in hosts:
        started = time.perf_counter()
        try:
            host.load_adapter(served_name, adapter.path)
        except (AdapterError, GenerationError) as exc:
            for done in hosts[: len(loaded_on)]:
                try:
                    done.unload_adapter(served_name)
                except (AdapterError, GenerationError):
                    log.warning("could not unload %s from %s after a failed promotion", served_name, _host_name(done))
            raise AdapterError(f"{served_name} could not be loaded on {_host_name(host)}, so nothing was promoted "
                               f"(unloaded again from {len(loaded_on)} host(s)): {exc}") from exc
        loaded_on.append(_host_name(host))
        load_ms[_host_name(host)] = round((time.perf_counter() - started) * 1000, 1)
    try:
        previous = registry.activate(served_name, audit=audit)
    except Exception:
        for done in hosts[: len(loaded_on)]:
            try:
                done.unload_adapter(served_name)
            except (AdapterError, GenerationError):
                log.warning("could not unload %s from %s after a failed promotion", served_name, _host_name(done))
        raise
    if on_flip is not None:
        on_flip()
    unloaded, errors = [], []
    if previous is not None:
        sleep(drain_s)  # requests that chose the previous version finish on it
        for host in hosts:
            try:
                host.unload_adapter(previous.served_name)
                unloaded.append(_host_name(host))
            except (AdapterError, GenerationError) as exc:
                errors.append(str(exc))
    return Promotion(registry.require(served_name), previous, loaded_on, unloaded, load_ms, errors)
