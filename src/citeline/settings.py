"""One typed settings tree: ``citeline.toml`` plus ``CITELINE_*`` environment variables.

Precedence (highest first): keyword arguments, environment (``CITELINE_RETRIEVAL__TOP_K=5``; nested
with ``__``), the TOML file, defaults. The TOML file is ``./citeline.toml`` unless ``CITELINE_CONFIG``
or ``Settings.load(path)`` names another. Relative paths in the file are relative to the file.

Plugins own their options: ``embedding.provider``, ``chunking.chunker``, ``generation.backend`` and
``answer.verifier`` name a plugin whose ``Config`` model checks the table beside the name when it is built
(``[embedding.options]``, ``[chunking.options]``, ``[generation.options]``, ``[answer.verifier_options]``;
a source's ``config``). Environment: ``CITELINE_GENERATION__OPTIONS__BASE_URL``. Keys that moved there
are refused with their new place; errors name the wrong key, never the value given (it may be a secret).

Nothing is read at import time: call :meth:`Settings.load`.
"""

from __future__ import annotations

import contextvars
import enum
import os
import re
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, TomlConfigSettingsSource

from citeline.answer_settings import AnswerCacheSettings, AnswerSettings
from citeline.answer_settings import Section as _Section
from citeline.auth_settings import AuthSettings, OidcSettings, PrincipalClaim
from citeline.errors import ConfigError
from citeline.principal_settings import PrincipalSourceSettings

__all__ = ["AdapterSettings", "AnswerCacheSettings", "AnswerSettings", "AuditSettings", "AuthSettings",
           "ChunkingSettings", "DatabaseSettings", "EmbeddingSettings", "Fusion", "GenerationSettings", "OidcSettings",
           "PrincipalClaim", "RetrievalSettings", "SchedulerSettings", "ServerSettings", "Settings",
           "SourcePolicySettings", "SourceSettings"]

_SOURCE_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")
_toml_path_var: contextvars.ContextVar[Path | None] = contextvars.ContextVar("citeline_toml", default=None)
_NAMESPACE = re.compile(r"^[a-z][a-z0-9_]{0,40}$")


def _problems(exc: ValueError) -> str:
    """A validation error as ``where: what`` lines, without the values given (they may be secrets)."""
    errors = exc.errors(include_url=False, include_input=False) if isinstance(exc, ValidationError) else None
    return str(exc) if errors is None else "\n".join(f"  {'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors)


class DatabaseSettings(_Section):
    """PostgreSQL. Without ``url`` citeline runs an embedded server in ``<home>/pgdata``."""
    url: SecretStr | None = None
    pool_min_size: int = Field(1, ge=0)
    pool_max_size: int = Field(8, ge=1)
    connect_timeout_s: float = Field(10.0, gt=0)
    pool_timeout_s: float = Field(10.0, gt=0, description="longest wait for a free pooled connection; a server "
                                  "request that waits longer is answered 503 with Retry-After")
    lock_timeout_s: float = Field(5.0, ge=0, description="citeline serve: longest wait of a request's SQL for a "
                                  "lock (an audit append behind a locked table) before the request is answered "
                                  "503 with Retry-After; 0 = no limit. Syncs and CLI commands are not limited")
    statement_timeout_s: float = Field(30.0, ge=0, description="citeline serve: longest a request's SQL statement "
                                       "may run (503 with Retry-After after that); 0 = no limit")
    namespace: str = Field("citeline", description="Postgres schema holding this index")
    auto_migrate: bool = Field(True, description="apply pending migrations on opening; false: fail until `db migrate`")

    @field_validator("namespace")
    @classmethod
    def _ns(cls, v: str) -> str:
        if not _NAMESPACE.match(v):
            raise ValueError("namespace must be lowercase letters, digits and _ (a Postgres schema name)")
        return v


class _PluginSection(_Section):
    """A section naming a plugin; keys that moved to its ``options`` table are refused with their new place."""

    _moved: ClassVar[tuple[str, str, frozenset[str]]] = ("", "", frozenset())  # section, options table, keys

    @model_validator(mode="before")
    @classmethod
    def _moved_keys(cls, data: Any) -> Any:
        section, table, moved = cls._moved
        old = sorted(k for k in data if isinstance(k, str) and k.lower() in moved) if isinstance(data, dict) else []
        if old:
            raise ValueError("; ".join(f"{section}.{k} moved to [{section}.{table}] {k} (environment: "
                                       f"CITELINE_{section.upper()}__{table.upper()}__{k.upper()})" for k in old))
        return data


class EmbeddingSettings(_PluginSection):
    """``provider``: an entry point in group ``citeline.embedders``; ``[embedding.options]``: its Config."""

    _moved = ("embedding", "options", frozenset("model batch_size query_cache query_encoder query_threads cache "
                                                "device".split()))
    provider: str = Field("sentence-transformers", description="entry point in group citeline.embedders")
    options: dict[str, Any] = Field(default_factory=dict, repr=False, description="the embedder's own options, "
                                    "checked by its Config model, e.g. {model = \"models/minilm\", batch_size = 32}")


class ChunkingSettings(_PluginSection):
    """``chunker``: an entry point in group ``citeline.chunkers``; ``[chunking.options]``: its Config."""

    _moved = ("chunking", "options", frozenset({"chunk_tokens", "overlap_tokens", "max_chars"}))
    chunker: str = Field("structured", description="entry point in group citeline.chunkers")
    options: dict[str, Any] = Field(default_factory=dict, repr=False, description="the chunker's own options, "
                                    "checked by its Config model, e.g. {chunk_tokens = 200, overlap_tokens = 20}")


class Fusion(enum.Enum):
    """How hybrid search joins its dense and lexical candidates (docs/benchmarks.md, "Retrieval levers")."""
    CONVEX = "convex"  # both scores for every candidate, scaled to 0..1, weighted sum
    RRF = "rrf"  # reciprocal rank fusion of the two lists


class RetrievalSettings(_Section):
    top_k: int = Field(8, ge=1, le=1000)
    candidates: int = Field(20, ge=1, le=10000, description="per-method candidates fused by RRF; the dense "
                            "ones (HNSW) are ordered by exact distance, so more candidates raise dense recall "
                            "and cost more under a selective ACL (docs/benchmarks.md)")
    fusion: Fusion = Field(Fusion.CONVEX, description="hybrid search: convex = every candidate of either list "
                           "scored by both methods, each scaled from its theoretical minimum to the best "
                           "candidate's, then weighted; rrf = reciprocal rank fusion (rrf_k)")
    fusion_weight: float = Field(0.8, ge=0.0, le=1.0, description="convex fusion: weight of the dense score "
                                 "(1 - it: the lexical score)")
    fusion_second_chunk: float = Field(0.0, ge=0.0, le=1.0, description="convex fusion: a chunk gains this times "
                                       "the best other candidate chunk of its document")
    rrf_k: int = Field(60, ge=1)
    ef_search: int = Field(200, ge=10, le=1000)
    text_search_config: str = Field("english", pattern=r"^[a-z_]+$")
    lexical_row_budget: int = Field(2000, ge=1, description="lexical search matches rows through the question's "
                                    "rarest terms whose document frequencies sum to at most this (the rarest "
                                    "term always counts); bounds the rows BM25 ranks")
    bm25_k1: float = Field(0.9, ge=0.0, description="BM25 term-frequency saturation (Anserini's default)")
    bm25_b: float = Field(0.4, ge=0.0, le=1.0, description="BM25 length normalisation (Anserini's default)")
    lexical_statistics: Literal["visible", "global"] = Field(
        "visible", description="which chunks BM25's document frequencies, chunk count and mean length come "
        "from: visible = only those the asking principal may see (statistics kept per visibility class), so "
        "the scores and order of its results say nothing about documents it may not see; global = every "
        "chunk (the old ranking; a principal can then learn from its results' scores whether hidden "
        "documents contain a word: docs/security.md)")
    reranker: str | None = Field(None, description="entry point in group citeline.rerankers (built-in: mmr) that "
                                 "reorders and prunes the retrieval.candidates hits the principal may see to "
                                 "top_k; unset: no reranking")
    reranker_options: dict[str, Any] = Field(default_factory=dict, repr=False, description="the reranker's own "
                                             "options, checked by its Config model, e.g. {diversity = 0.3}")


class GenerationSettings(_PluginSection):
    """The model that writes answers: ``backend`` with its Config in ``[generation.options]``, and the rest."""

    _moved = ("generation", "options", frozenset("model base_url api_key tokenizer retries repetition_penalty "
                                                 "device engine threads prompt_cache_mib".split()))
    backend: str = Field("embedded", description="embedded (CPU, in process), openai (vLLM or any "
                         "OpenAI-compatible server) or extractive (no model)")
    options: dict[str, Any] = Field(default_factory=dict, repr=False, description="the backend's own "
                                    "options, checked by its Config model, e.g. {base_url = \"http://vllm:8000/v1\"}")
    timeout_s: float = Field(60.0, gt=0, description="longest model request (openai), wait for the model (embedded)")
    max_tokens: int = Field(256, ge=1, le=8192, description="answer length limit")
    context_tokens: int = Field(2048, ge=256, description="the model's context window")
    evidence_tokens: int = Field(1200, ge=64, description="token budget for quoted evidence in the prompt")
    temperature: float = Field(0.0, ge=0.0, le=2.0)
    max_concurrent: int | None = Field(None, ge=1, le=1024, description="citeline serve: generations running at "
                                       "once (its own limit, apart from the database pool); a request that waits "
                                       "longer than queue_timeout_s for one gets what when_busy says. "
                                       "Default: the backend's own (embedded 1: it runs one at a time; else 8)")
    queue_timeout_s: float = Field(10.0, gt=0, description="citeline serve: longest wait for a generation slot")
    max_waiting: int | None = Field(None, ge=0, le=4096, description="citeline serve: questions that may wait "
                                    "for a generation slot at once; one more gets what when_busy says at once "
                                    "(default: max_concurrent, one waiting per running generation)")
    when_busy: Literal["extractive", "reject"] = Field(
        "extractive", description="no generation slot within queue_timeout_s: extractive = answer with the "
        "extractive answer from the same evidence (whole evidence sentences with their citations, the answer "
        "verification falls back to; the audit row says the model was busy); reject = 503 with Retry-After")


class AdapterSettings(_Section):
    """Team LoRA adapters: where registered adapters live, which servers load them, how swaps drain."""

    store: Path | None = Field(None, description="folder for registered adapters (default <home>/adapters); model "
                               "servers load from here, so it must be the same path on their side (a shared volume)")
    replicas: list[str] = Field(default_factory=list, description="model servers' URLs that `citeline adapter sync` "
                                "and promotions load adapters on (default: generation.options.base_url for the "
                                "openai backend; the embedded backend loads in process)")
    base_model_path: Path | None = Field(None, description="a local copy of the served base model (its config.json "
                                         "is what preflight checks adapters against; default: the embedded "
                                         "SmolLM2 conversion, which is also what the tests' vLLM serves)")
    max_rank: int = Field(16, ge=1, le=512, description="the servers' --max-lora-rank")
    cache_s: float = Field(1.0, ge=0.0, description="how long a server caches the team -> adapter mapping")
    drain_s: float = Field(10.0, ge=0.0, description="after a promotion, wait this long before unloading the old "
                           "version (longer than cache_s plus the slowest answer)")


class ServerSettings(_Section):
    """``citeline serve``: how many requests it works on at once and how long one may wait for its turn.

    Probes (``/healthz``, ``/readyz``, ``/metrics``) never wait for a request slot or thread.
    """

    max_concurrent_requests: int | None = Field(None, ge=1, le=4096, description="requests worked on at once "
                                                "(each holds one request thread); default database.pool_max_size "
                                                "+ the generation limit (generation.max_concurrent)")
    queue_timeout_s: float = Field(10.0, gt=0, description="longest a request waits for a slot before it is "
                                   "answered 503 with Retry-After")
    retry_after_s: int = Field(5, ge=1, le=3600, description="the Retry-After (seconds) of 503 answers to "
                               "overload: no request slot, no generation slot, no database connection or lock "
                               "in time")
    probe_timeout_s: float = Field(2.0, gt=0, description="/readyz: answer 503 when the database does not answer "
                                   "SELECT 1 within this")
    # Limits checked at the edge (citeline.serving.limits) before a /v1 request's body is read.
    max_body_bytes: int = Field(1_048_576, ge=1024, le=1 << 30, description="largest request body; bigger ones "
                                "are answered 413 (Content-Length checked up front, chunked bodies counted)")
    rate_limit_per_minute: int = Field(1200, ge=0, description="requests per API key per minute (a token bucket "
                                       "refilled at this rate); over it: 429 with Retry-After. 0 = no limit")
    rate_limit_burst: int = Field(300, ge=1, description="requests a key may send at once before the per-minute "
                                  "rate applies (the bucket's size)")
    auth_failures_per_minute: int = Field(60, ge=0, description="failed logins (missing, malformed, unknown or "
                                          "revoked keys) per client address per minute; over it: 429 for keys "
                                          "that have not authenticated before. 0 = no limit")
    auth_failure_burst: int = Field(30, ge=1, description="failed logins a client address may make at once")


class AuditSettings(_Section):
    """The audit chain's key: it lives outside the database, so a database login cannot forge or re-chain rows."""

    key: SecretStr | None = Field(None, description="the HMAC key itself (at least 32 characters), e.g. from "
                                  "CITELINE_AUDIT__KEY; wins over key_file. Every process writing to one database "
                                  "must use the same key")
    key_file: Path | None = Field(None, description="file holding the key (default <home>/audit.key, generated "
                                  "with mode 0600 on first use); keep a copy: without it the chain cannot be "
                                  "verified")

    @field_validator("key")
    @classmethod
    def _key(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None and len(v.get_secret_value().strip()) < 32:
            raise ValueError("audit.key must be at least 32 characters (e.g. `openssl rand -hex 32`)")
        return v


class SchedulerSettings(_Section):
    """``citeline scheduler``: how often it looks for due sources and how a failed run is retried."""

    tick_s: float = Field(30.0, gt=0, description="seconds between looks for due sources")
    retries: int = Field(3, ge=0, le=100, description="retries of a failed run per cron slot")
    backoff_s: float = Field(30.0, gt=0, description="wait before the first retry; doubles per failure")
    max_backoff_s: float = Field(900.0, gt=0, description="longest wait between retries")
    http_port: int | None = Field(None, ge=0, le=65535, description="serve /metrics and /healthz on this port "
                                  "(0: any free one); unset: no listener")
    http_host: str = Field("127.0.0.1", description="address of that listener (0.0.0.0 in a container)")

    @model_validator(mode="after")
    def _order(self) -> SchedulerSettings:
        if self.max_backoff_s < self.backoff_s:
            raise ValueError("scheduler.max_backoff_s must be >= scheduler.backoff_s")
        return self


class SourcePolicySettings(_Section):
    """``[source_policy]``: what every ``[[sources]]`` table may do, set by the admins of this install."""

    allowed_roots: list[Path] | None = Field(
        None, description="folders that sources may read local files from (a folder source's path, a tickets "
        "or catalog file); a source whose path, with symlinks resolved, is under none of them is refused before "
        "any sync. Relative paths are relative to the config file. Unset: any path the process can read")


class SourceSettings(_Section):
    """One ``[[sources]]`` table: a connector kind, its own config table, default access and schedule."""

    name: str
    connector: str = Field(description="entry point in group citeline.connectors (folder, tickets, catalog, ...)")
    config: dict[str, Any] = Field(default_factory=dict)
    access: dict[str, Any] | None = Field(None, description="default access for documents that set none")
    schedule: str | None = Field(None, description="cron expression for `citeline scheduler`")
    batch_size: int = Field(256, ge=1, le=10000, description="documents per transaction")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _SOURCE_NAME.match(v):
            raise ValueError(f"source name {v!r}: use lowercase letters, digits, '.', '_' and '-'")
        return v


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="CITELINE_",
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )

    home: Path = Field(Path(".citeline"), description="data directory (embedded database, caches)")
    database_url: SecretStr | None = Field(None, description="PostgreSQL URL; unset = embedded server")
    database: DatabaseSettings = DatabaseSettings()
    embedding: EmbeddingSettings = EmbeddingSettings()
    chunking: ChunkingSettings = ChunkingSettings()
    retrieval: RetrievalSettings = RetrievalSettings()
    generation: GenerationSettings = GenerationSettings()
    answer: AnswerSettings = AnswerSettings()
    adapters: AdapterSettings = AdapterSettings()
    server: ServerSettings = ServerSettings()
    scheduler: SchedulerSettings = SchedulerSettings()
    source_policy: SourcePolicySettings = SourcePolicySettings()
    audit: AuditSettings = AuditSettings()
    auth: AuthSettings = AuthSettings()
    sources: list[SourceSettings] = Field(default_factory=list)
    principal_sources: list[PrincipalSourceSettings] = Field(default_factory=list)  # principal_settings.py
    config_path: Path | None = Field(None, exclude=True, description="the TOML file these came from")

    @field_validator("database_url")
    @classmethod
    def _url(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None and not v.get_secret_value().startswith(("postgresql://", "postgres://")):
            raise ValueError("database_url must be a postgresql:// URL")
        return v

    @model_validator(mode="after")
    def _unique_sources(self) -> Settings:
        names = [s.name for s in self.sources]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"source names must be unique; repeated: {dupes}")
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        toml = _toml_path_var.get()
        if toml is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=toml))
        return tuple(sources)

    @classmethod
    def load(cls, path: str | Path | None = None, **overrides: Any) -> Settings:
        """Read settings from ``path`` (or ``$CITELINE_CONFIG``, or ``./citeline.toml`` if it exists)."""
        chosen = path or os.environ.get("CITELINE_CONFIG")
        toml: Path | None
        if chosen:
            toml = Path(chosen).expanduser().resolve()
            if not toml.is_file():
                raise ConfigError(f"config file {toml} does not exist: pass --config PATH or create it")
        else:
            toml = Path("citeline.toml").resolve() if Path("citeline.toml").is_file() else None
        token = _toml_path_var.set(toml)
        try:
            settings = cls(**overrides)
        except ValueError as exc:  # pydantic.ValidationError and TOML errors; not chained: they repeat values
            where = f" in {toml}" if toml else ""
            raise ConfigError(f"invalid configuration{where}:\n{_problems(exc)}") from None
        finally:
            _toml_path_var.reset(token)
        return settings._resolved(toml)

    def _resolved(self, toml: Path | None) -> Settings:
        base = toml.parent if toml else Path.cwd()
        home = self.home if self.home.is_absolute() else (base / self.home)
        return self.model_copy(update={"home": home.resolve(), "config_path": toml})

    def resolve_path(self, value: str | Path) -> Path:
        """A path from the config file, relative to that file's folder."""
        p = Path(value).expanduser()
        if p.is_absolute():
            return p
        base = self.config_path.parent if self.config_path else Path.cwd()
        return (base / p).resolve()

    def source(self, name: str) -> SourceSettings:
        for s in self.sources:
            if s.name == name:
                return s
        known = ", ".join(s.name for s in self.sources) or "none configured"
        raise ConfigError(f"unknown source {name!r} (known: {known}); add a [[sources]] table to citeline.toml")

    def effective_database_url(self) -> str | None:
        url = self.database_url or self.database.url
        return url.get_secret_value() if url else None

