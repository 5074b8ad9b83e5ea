"""The admin API's typed bodies and replies (pydantic), so every ``/v1/admin`` route is described in the OpenAPI
document. Request bodies refuse unstorable text (400 ``invalid_text``) and bound every field.

A reply that shows one of the core's records is that record's dataclass made a pydantic dataclass
(``SourceOut``: :class:`SourceStatus`, ``RunOut``: :class:`RunStatus`, ``AuditRowOut``: :class:`AuditRecord`,
``HitOut``: :class:`~citeline.domain.SearchHit`, ``FeedbackSummaryOut``: :class:`FeedbackSummary`,
``FeedbackEntryOut``: :class:`FeedbackEntry`), so its fields cannot drift from the record's; a subclass only
narrows a field's type, adds a description, adds a field or leaves one out of the reply."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, computed_field, field_validator
from pydantic.dataclasses import dataclass

from citeline.domain import SearchHit, SearchMode
from citeline.facade import AuditRecord, FeedbackEntry, FeedbackSummary, RunStatus, SourceStatus
from citeline.serving.api.bodies import _Body

__all__ = [
    "AdapterOut",
    "AdapterRegisterBody",
    "AuditPageOut",
    "AuditRowOut",
    "ChunkReplayOut",
    "FeedbackEntryOut",
    "FeedbackPageOut",
    "FeedbackSummaryOut",
    "KeyCreatedOut",
    "KeyOut",
    "KeyRevokedOut",
    "PrincipalOut",
    "PrincipalRemovedOut",
    "PromoteBody",
    "PromotionOut",
    "ReplayOut",
    "RunOut",
    "SourceOut",
    "SyncBody",
    "SyncStartedOut",
    "VerifyOut",
    "ViewAsBody",
    "ViewAsOut",
]

Name = Field(min_length=1, max_length=200)
# a reply always carries every field: the OpenAPI document lists those with a default as required too
_REPLY = ConfigDict(json_schema_serialization_defaults_required=True)


class KeyOut(BaseModel):
    key_id: str
    user: str
    admin: bool
    label: str
    created_at: datetime
    revoked_at: datetime | None


class KeyCreatedOut(BaseModel):
    key_id: str
    user: str
    admin: bool
    label: str
    key: str = Field(description="the whole secret, shown this once and never stored")


class KeyRevokedOut(BaseModel):
    key_id: str
    revoked: bool


class PrincipalOut(BaseModel):
    user: str
    groups: list[str]
    team: str | None


class PrincipalRemovedOut(BaseModel):
    user: str
    removed: bool
    revoked_keys: list[str]


@dataclass(frozen=True, config=_REPLY)
class SourceOut(SourceStatus):
    """A source's status (:class:`SourceStatus`) and its last run's id."""

    error: str | None = Field(description="the last run's error, if it failed")
    last_run_id: int | None = Field(kw_only=True, description="the last run, for /v1/admin/sources/runs/{run_id} "
                                    "(its failures)")


class SyncBody(_Body):
    full: bool = Field(False, description="ignore the stored checkpoint and start from the beginning")


class SyncStartedOut(BaseModel):
    source: str
    run_id: int
    status_url: str


class FailureOut(BaseModel):
    external_id: str
    reason: str
    at: datetime


@dataclass(frozen=True, config=_REPLY)
class RunOut(RunStatus):
    """A sync run (:class:`RunStatus`): its status, counts and first failures."""

    status: Literal["running", "succeeded", "failed", "interrupted"]
    failures: list[FailureOut]  # type: ignore[assignment]  # the same dicts, typed for the OpenAPI document


class AdapterOut(BaseModel):
    served_name: str
    name: str
    team: str
    version: str
    status: str
    base_model: str
    rank: int
    target_modules: list[str]
    metrics: dict[str, Any] = Field(description="the adapter's evaluation (against the baseline), as recorded")
    created_at: datetime
    created_by: str
    promoted_at: datetime | None


class AdapterRegisterBody(_Body):
    path: str = Field(min_length=1, max_length=4096, description="a folder on the server: relative to the adapter "
                      "store, or absolute under adapters.store or source_policy.allowed_roots")
    team: str = Name
    name: str | None = Field(None, min_length=1, max_length=200)


class PromoteBody(_Body):
    force: bool = Field(False, description="promote even if its evaluation does not beat the current adapter")
    drain_s: float | None = Field(None, ge=0.0, le=3600.0)


class PromotionOut(BaseModel):
    adapter: str
    previous: str | None
    loaded_on: list[str]
    unloaded_from: list[str]
    load_ms: dict[str, float]
    errors: list[str]


class VerifyOut(BaseModel):
    ok: bool
    rows: int
    head: str
    head_id: int
    legacy_rows: int
    anchor_id: int | None
    problems: list[str]


@dataclass(frozen=True, config=_REPLY)
class AuditRowOut(AuditRecord):
    """One audit row (:class:`AuditRecord`), as stored and hashed."""


class AuditPageOut(BaseModel):
    rows: list[AuditRowOut]
    next_before: int | None = Field(description="pass as `before` for the next (older) page; null: last page")


class ViewAsBody(_Body):
    user: str = Field(min_length=1, max_length=200, description="the principal to act as")
    what: Literal["search", "ask"] = "search"
    query: str = Field(min_length=1, max_length=4000, description="the search query or the question")
    k: int | None = Field(None, ge=1, le=100, description="search: how many chunks")
    mode: SearchMode = SearchMode.HYBRID
    model: str | None = Field(None, max_length=200, description="ask: the model, as in /v1/ask")


@dataclass(frozen=True, config=_REPLY)
class HitOut(SearchHit):
    """A hit (:class:`SearchHit`) as ``/v1/search`` shows it: without the ranking details."""

    dense_rank: int | None = Field(default=None, exclude=True)
    lexical_rank: int | None = Field(default=None, exclude=True)
    dense_distance: float | None = Field(default=None, exclude=True)
    lexical_score: float | None = Field(default=None, exclude=True)
    heading: str = Field(default="", exclude=True)


class ViewAsOut(BaseModel):
    user: str
    what: Literal["search", "ask"]
    impersonation_audit_id: int = Field(description="the admin/impersonate audit row naming both identities")
    hits: list[HitOut] | None = None
    answer: dict[str, Any] | None = Field(None, description="ask: what /v1/ask returns to the user")


class ChunkReplayOut(BaseModel):
    n: int | None
    chunk_id: int
    document_id: int | None
    source: str | None
    external_id: str | None
    exists: bool = Field(description="the chunk is still indexed")
    unchanged: bool = Field(description="its text is what was shown (a chunk's text never changes under its id)")
    visible_now: bool = Field(description="the asker may see it today (decided by PostgreSQL as the asker)")
    title: str | None
    url: str | None
    text: str | None = Field(description="the text shown, when the chunk still exists")


class ReplayOut(BaseModel):
    row: AuditRowOut
    asker: str | None
    asker_exists: bool
    chunks: list[ChunkReplayOut]


@dataclass(frozen=True, config=_REPLY)
class FeedbackSummaryOut(FeedbackSummary):
    """Feedback on one team's answers from one model (:class:`FeedbackSummary`): the base model, or an adapter
    version's served name."""

    @computed_field(description="up + down")  # type: ignore[prop-decorator]
    @property
    def total(self) -> int:
        return FeedbackSummary.total.fget(self)  # type: ignore[attr-defined]

    @computed_field(description="up / total (0 when there is none), 4 decimals")  # type: ignore[prop-decorator]
    @property
    def up_share(self) -> float:
        return round(FeedbackSummary.up_share.fget(self), 4)  # type: ignore[attr-defined]


@dataclass(frozen=True, config=_REPLY)
class FeedbackEntryOut(FeedbackEntry):
    """One feedback row (:class:`FeedbackEntry`): the rating, reason and correction as the asker gave them, the
    answer's audit id and question."""

    rating: Literal["up", "down"]  # type: ignore[assignment]  # the core's 1 / -1, as /v1/feedback takes it

    @field_validator("rating", mode="before")
    @classmethod
    def _word(cls, value: Any) -> Any:
        return {1: "up", -1: "down"}.get(value, value)


class FeedbackPageOut(BaseModel):
    summary: list[FeedbackSummaryOut] = Field(description="per team and model (adapter version): up, down, "
                                              "corrected, up share")
    rows: list[FeedbackEntryOut] = Field(description="the latest feedback, newest first")
