"""What the assistant returns: an :class:`Answer` with its :class:`Citation` s, and the :class:`Prepared` state
of a question between retrieval and generation (shared by :class:`citeline.answers.assistant.Assistant` and
:class:`citeline.answers.streaming.AnswerStream`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from citeline.answers.cache import CachedAnswer
from citeline.answers.prompt import REFUSAL, GroundedPrompt
from citeline.answers.verification import Unsupported, Verification
from citeline.contracts.generator import ChatMessage
from citeline.domain import Principal, SearchHit

__all__ = ["Answer", "Citation", "Prepared", "best_similarity", "citation", "is_refusal"]


@dataclass(frozen=True)
class Citation:
    n: int
    chunk_id: int
    document_id: int
    source: str
    external_id: str
    title: str
    url: str | None
    snippet: str
    score: float
    section: str = ""  # where in the document: the chunk's heading path (a PDF's "Page 2", a DOCX heading)

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


@dataclass(frozen=True)
class Answer:
    question: str
    text: str
    refused: bool
    citations: tuple[Citation, ...]  # the evidence the answer cites, in order of first use
    sources: tuple[Citation, ...]  # every piece of evidence shown (the prompt's, or the closest on refusal)
    invalid_citations: int
    model: str
    best_score: float | None
    latency_ms: dict[str, float]
    audit_id: int
    prompt_tokens: int = 0
    completion_tokens: int = 0
    model_note: str | None = None  # why the team's adapter was not used (the base model answered)
    # verification (citeline.answers.verification): every delivered sentence supported by the evidence it cites?
    verified: bool = False
    unsupported: tuple[Unsupported, ...] = ()  # sentences of the model's answer judged unsupported, and why
    verify_policy: str = "off"  # the policy applied: fallback | drop | flag | off
    fallback: bool = False  # the delivered text is the extractive answer from the same evidence
    finish_reason: str = "stop"  # "stop" or "length" (max_tokens reached)
    retrieval_question: str = ""  # the standalone question retrieval used (a follow-up rewritten with its history)
    stopped_early: bool = False  # generation stopped by answer.early_fallback (the fallback answered)
    cache: str = "off"  # the answer cache: hit (generation skipped), miss (looked up, generated) or off

    @property
    def cached(self) -> bool:
        """Whether the text came from the answer cache (generated earlier from exactly this evidence)."""
        return self.cache == "hit"

    def as_dict(self) -> dict[str, Any]:
        return {"question": self.question, "answer": self.text, "refused": self.refused,
                "citations": [c.as_dict() for c in self.citations], "sources": [c.as_dict() for c in self.sources],
                "invalid_citations": self.invalid_citations, "model": self.model, "model_note": self.model_note,
                "best_score": self.best_score,
                "verified": self.verified, "verify_policy": self.verify_policy, "fallback": self.fallback,
                "unsupported": [u.as_dict() for u in self.unsupported],
                "finish_reason": self.finish_reason, "retrieval_question": self.retrieval_question or self.question,
                "stopped_early": self.stopped_early, "cached": self.cached,
                "latency_ms": self.latency_ms, "audit_id": self.audit_id,
                "usage": {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens}}


@dataclass
class Prepared:
    """A question made ready to answer: retrieved, refused or prompted; what generation and the audit need."""

    question: str
    principal: Principal
    model: str
    hits: tuple[SearchHit, ...]
    best: float | None
    refused: bool
    prompt: GroundedPrompt | None
    sources: tuple[Citation, ...]
    latency: dict[str, float] = field(default_factory=dict)
    note: str | None = None
    retrieval_question: str = ""
    rewrite: str = "none"
    history: tuple[ChatMessage, ...] = ()
    max_tokens: int | None = None
    temperature: float | None = None
    stop: tuple[str, ...] = ()
    stopped_early: bool = False  # generation stopped by answer.early_fallback
    busy: bool = False  # no generation slot within generation.queue_timeout_s: answered extractively
    cache_key: str | None = None  # the answer cache's key (None: not cached: refused, sampled, cache off)
    hit: CachedAnswer | None = None  # the cached answer for cache_key

    @property
    def cache_state(self) -> str:
        return "hit" if self.hit is not None else "miss" if self.cache_key is not None else "off"

    def audit_payload(self, *, text: str | None, invalid: int, streamed: bool, extra: dict[str, float],
                      verification: Verification | None = None) -> dict[str, Any]:
        """The ``ask``/``answer`` audit row's payload (the audit log adds the request id)."""
        payload: dict[str, Any] = {
            "question": self.question, "model": self.model, "model_note": self.note, "refused": self.refused,
            "streamed": streamed,
            "best_score": None if self.best is None else round(self.best, 4),
            "shown": [{"n": c.n, "chunk_id": c.chunk_id, "document_id": c.document_id, "source": c.source,
                       "external_id": c.external_id} for c in self.sources],
            "groups": list(self.principal.groups), "invalid_citations": invalid, "cached": self.hit is not None,
            "latency_ms": {k: round(v, 2) for k, v in {**self.latency, **extra}.items()},
        }
        if self.busy:
            payload["answered_by"] = "extractive (model busy)"
        if self.history:
            payload["retrieval_question"] = self.retrieval_question
            payload["rewrite"] = self.rewrite
            payload["history_turns"] = len(self.history)
        if verification is not None:
            payload["verification"] = {**verification.as_dict(), "generation_stopped_early": self.stopped_early}
        if text is not None:
            payload["answer"] = text
        return payload


def best_similarity(hits: tuple[SearchHit, ...] | list[SearchHit]) -> float | None:
    """The refusal score: the best cosine similarity between the question and a visible retrieved chunk."""
    sims = [1.0 - h.dense_distance for h in hits if h.dense_distance is not None]
    return max(sims) if sims else None


def is_refusal(text: str) -> bool:
    """Whether ``text`` is the refusal sentence (:data:`citeline.answers.prompt.REFUSAL`)."""
    return text.strip().rstrip(".").lower() == REFUSAL.rstrip(".").lower()


def _snippet(text: str, limit: int = 280) -> str:
    text = " ".join(re.sub(r"(?m)^\s{0,3}#{1,6}\s+", "", text).split())  # no Markdown heading marks
    return text if len(text) <= limit else text[: limit - 1].rsplit(" ", 1)[0] + "…"


def citation(n: int, hit: SearchHit) -> Citation:
    """Evidence ``[n]`` as shown to a client: where it comes from and a snippet of its text."""
    return Citation(n, hit.chunk_id, hit.document_id, hit.source, hit.external_id, hit.title, hit.url,
                    _snippet(hit.text), round(hit.score, 6), hit.heading)
