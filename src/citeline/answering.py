"""Grounded answers: retrieve as the principal → refuse or prompt → generate → check citations → audit.

:class:`Assistant` is what ``citeline ask`` and the server call. Every answer (refusals included) writes
one audit row *before* it is returned; if the row cannot be written the answer is withheld
(:class:`citeline.errors.AuditError`). A streamed answer writes its row before the first delta (with the
sources it will show and the retrieval latency; the text is not known yet), so no byte reaches a client
unaudited.

Refusal: when the best visible chunk's cosine similarity to the question is below
``answer.min_score`` (or nothing is visible) the answer is :data:`citeline.prompting.REFUSAL` with the
closest sources, and the model is not called. Citations ``[n]`` that name no evidence are removed from
the answer (also from a stream, as it is produced) and counted.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from citeline.audit import AuditLog
from citeline.domain import Principal, SearchHit, SearchMode
from citeline.errors import GenerationError, ModelNotFoundError
from citeline.prompting import REFUSAL, GroundedPrompt, build_prompt, check_citations, replace_citations
from citeline.retrieval import Retriever
from citeline.registry import AdapterRouter, ModelChoice
from citeline.serving.generation import AdapterHost, GenerationBackend, GenerationRequest
from citeline.settings import AnswerSettings, GenerationSettings

__all__ = ["Answer", "AnswerStream", "Assistant", "Citation", "best_similarity"]


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

    def as_dict(self) -> dict[str, Any]:
        return {"question": self.question, "answer": self.text, "refused": self.refused,
                "citations": [c.as_dict() for c in self.citations], "sources": [c.as_dict() for c in self.sources],
                "invalid_citations": self.invalid_citations, "model": self.model, "model_note": self.model_note,
                "best_score": self.best_score,
                "latency_ms": self.latency_ms, "audit_id": self.audit_id,
                "usage": {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens}}


@dataclass
class _Prepared:
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


def best_similarity(hits: tuple[SearchHit, ...] | list[SearchHit]) -> float | None:
    """The refusal score: the best cosine similarity between the question and a visible retrieved chunk."""
    sims = [1.0 - h.dense_distance for h in hits if h.dense_distance is not None]
    return max(sims) if sims else None


def _is_refusal(text: str) -> bool:
    return text.strip().rstrip(".").lower() == REFUSAL.rstrip(".").lower()


def _snippet(text: str, limit: int = 280) -> str:
    text = " ".join(re.sub(r"(?m)^\s{0,3}#{1,6}\s+", "", text).split())  # no Markdown heading marks
    return text if len(text) <= limit else text[: limit - 1].rsplit(" ", 1)[0] + "…"


def _citation(n: int, hit: SearchHit) -> Citation:
    return Citation(n, hit.chunk_id, hit.document_id, hit.source, hit.external_id, hit.title, hit.url,
                    _snippet(hit.text), round(hit.score, 6))


class Assistant:
    """Answers questions for principals from what they may see."""

    def __init__(self, retriever: Retriever, backend: GenerationBackend, audit: AuditLog, *,
                 answer: AnswerSettings | None = None, generation: GenerationSettings | None = None,
                 router: AdapterRouter | None = None) -> None:
        self.retriever = retriever
        self.router = router
        self.backend = backend
        self.audit = audit
        self.settings = answer or AnswerSettings()
        self.generation = generation or GenerationSettings()

    # -- stages ------------------------------------------------------------------------------------
    def resolve_model(self, principal: Principal, requested: str | None) -> ModelChoice:
        """The model to generate with: the team's adapter (with a router), the base, or one the request names.

        A named adapter of another team is refused (ForbiddenError); a team without an active adapter gets
        the base model and a note saying so. An in-process backend loads a registered adapter on first use.
        """
        base = self.backend.base_model
        if self.router is not None:
            choice = self.router.choose(principal, requested, base)
        else:
            choice = ModelChoice(base if requested in (None, "", "citeline") else requested)
        if choice.model == base:
            return choice
        if choice.adapter is not None:
            if isinstance(self.backend, AdapterHost) and choice.model not in self.backend.adapters():
                self.backend.load_adapter(choice.model, choice.adapter.path)  # preflighted when registered
            return choice  # a remote server reports a missing adapter itself (ModelNotFoundError)
        if choice.model not in self.backend.models():
            raise ModelNotFoundError(f"model {choice.model!r} is not served by the {self.backend.name} backend "
                                     f"(available: {', '.join(self.backend.models())})")
        return choice

    def _prepare(self, question: str, principal: Principal, model: str | None) -> _Prepared:
        choice = self.resolve_model(principal, model)
        result = self.retriever.search(question, user=principal.user, k=self.settings.evidence_k,
                                       mode=SearchMode.HYBRID)
        best = best_similarity(result.hits)
        refused = best is None or best < self.settings.min_score
        t1 = time.perf_counter()
        if refused:
            ranked = sorted(result.hits, key=lambda h: h.dense_distance if h.dense_distance is not None else 9)
            sources = tuple(_citation(i, h) for i, h in enumerate(ranked[: self.settings.refusal_sources], 1))
            prompt = None
        else:
            prompt = build_prompt(question, result.hits, self.backend.count_tokens,
                                  evidence_tokens=self.generation.evidence_tokens)
            by_chunk = {h.chunk_id: h for h in result.hits}
            sources = tuple(_citation(e.n, by_chunk[e.chunk_id]) for e in prompt.evidence)
        latency = {"embed_ms": result.embed_ms, "retrieve_ms": result.db_ms,
                   "prompt_ms": (time.perf_counter() - t1) * 1000}
        return _Prepared(question, principal, choice.model, result.hits, best, refused, prompt, sources, latency,
                         choice.note)

    def _request(self, p: _Prepared) -> GenerationRequest:
        assert p.prompt is not None
        return GenerationRequest(p.prompt.messages, model=None if p.model == self.backend.base_model else p.model,
                                 max_tokens=self.generation.max_tokens, temperature=self.generation.temperature,
                                 question=p.question, evidence=p.prompt.evidence)

    def _audit(self, p: _Prepared, *, text: str | None, invalid: int, streamed: bool, extra: dict[str, float]) -> int:
        payload = {
            "question": p.question, "model": p.model, "model_note": p.note, "refused": p.refused,
            "streamed": streamed,
            "best_score": None if p.best is None else round(p.best, 4),
            "shown": [{"n": c.n, "chunk_id": c.chunk_id, "document_id": c.document_id, "source": c.source,
                       "external_id": c.external_id} for c in p.sources],
            "groups": list(p.principal.groups), "invalid_citations": invalid,
            "latency_ms": {k: round(v, 2) for k, v in {**p.latency, **extra}.items()},
        }
        if text is not None:
            payload["answer"] = text
        return self.audit.append("ask", "answer", principal=p.principal.user, team=p.principal.team,
                                 payload=payload).id

    # -- public ------------------------------------------------------------------------------------
    def ask(self, question: str, principal: Principal, *, model: str | None = None) -> Answer:
        t0 = time.perf_counter()
        p = self._prepare(question, principal, model)
        gen_tokens = (0, 0)
        if p.refused:
            text, cited, invalid = REFUSAL, (), 0
        else:
            t1 = time.perf_counter()
            gen = self.backend.generate(self._request(p))
            p.latency["generate_ms"] = (time.perf_counter() - t1) * 1000
            if gen.model != p.model:  # every answer comes from exactly the model it was routed to
                raise GenerationError(f"the {self.backend.name} backend answered with model {gen.model!r} for a "
                                      f"request routed to {p.model!r}; check the model server's served names")
            check = check_citations(gen.text, len(p.sources))
            text, cited, invalid = check.text, check.cited, check.invalid
            p.refused = _is_refusal(text)  # the model itself may decline from the evidence
            gen_tokens = (gen.prompt_tokens, gen.completion_tokens)
        t2 = time.perf_counter()
        audit_id = self._audit(p, text=text, invalid=invalid, streamed=False,
                               extra={"total_ms": (t2 - t0) * 1000})
        p.latency["audit_ms"] = (time.perf_counter() - t2) * 1000
        p.latency["total_ms"] = (time.perf_counter() - t0) * 1000
        by_n = {c.n: c for c in p.sources}
        return Answer(question, text, p.refused, tuple(by_n[n] for n in cited), p.sources, invalid, p.model,
                      p.best, {k: round(v, 2) for k, v in p.latency.items()}, audit_id, *gen_tokens, p.note)

    def stream(self, question: str, principal: Principal, *, model: str | None = None) -> AnswerStream:
        """Retrieve, audit, then return a stream whose deltas can be sent as they come."""
        t0 = time.perf_counter()
        p = self._prepare(question, principal, model)
        audit_id = self._audit(p, text=REFUSAL if p.refused else None, invalid=0, streamed=True,
                               extra={"before_stream_ms": (time.perf_counter() - t0) * 1000})
        return AnswerStream(self, p, audit_id, t0)


class AnswerStream:
    """Deltas of one answer (iterate it), then :attr:`answer` with citations and latency."""

    def __init__(self, assistant: Assistant, prepared: _Prepared, audit_id: int, t0: float) -> None:
        self._a = assistant
        self._p = prepared
        self.audit_id = audit_id
        self._t0 = t0
        self.sources = prepared.sources
        self.refused = prepared.refused
        self.model = prepared.model
        self.model_note = prepared.note
        self.answer: Answer | None = None

    def __iter__(self) -> Iterator[str]:
        p = self._p
        if p.refused:
            deltas: Iterator[str] = iter([REFUSAL])
        else:
            deltas = self._a.backend.stream(self._a._request(p))
        t1 = time.perf_counter()
        filt = _CitationFilter(len(p.sources))
        parts: list[str] = []
        for delta in deltas:
            out = filt.feed(delta)
            if out:
                parts.append(out)
                yield out
        tail = filt.flush()
        if tail:
            parts.append(tail)
            yield tail
        p.latency["generate_ms"] = (time.perf_counter() - t1) * 1000
        p.latency["total_ms"] = (time.perf_counter() - self._t0) * 1000
        check = check_citations("".join(parts), len(p.sources))
        by_n = {c.n: c for c in p.sources}
        self.answer = Answer(p.question, "".join(parts), p.refused or _is_refusal("".join(parts)),
                             tuple(by_n[n] for n in check.cited), p.sources, filt.invalid, p.model, p.best,
                             {k: round(v, 2) for k, v in p.latency.items()}, self.audit_id, model_note=p.note)


class _CitationFilter:
    """Drops ``[n]`` markers naming no evidence from a stream of text pieces, holding back only a marker."""

    _PARTIAL = re.compile(r"\[[\d,\s]{0,12}$")

    def __init__(self, n_evidence: int) -> None:
        self.n = n_evidence
        self.buf = ""
        self.invalid = 0

    def feed(self, piece: str) -> str:
        self.buf += piece
        m = self._PARTIAL.search(self.buf)
        ready, self.buf = (self.buf[: m.start()], self.buf[m.start():]) if m else (self.buf, "")
        return self._clean(ready)

    def flush(self) -> str:
        ready, self.buf = self.buf, ""
        return self._clean(ready)

    def _clean(self, text: str) -> str:
        if "[" not in text:
            return text
        replaced = replace_citations(text, self.n)
        self.invalid += replaced.invalid
        return replaced.text
