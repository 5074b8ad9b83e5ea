"""A streamed answer: :class:`AnswerStream` yields the deltas of one answer (citations naming no evidence
removed as they arrive, each sentence released once verified), then holds the :class:`Answer` and writes
the closing ``answer.end`` audit row.
"""

from __future__ import annotations

import logging
import re
import time
import weakref
from collections.abc import Callable, Generator, Iterator
from dataclasses import replace
from typing import Protocol, cast

from citeline.access.audit import AuditLog
from citeline.answers.answer import Answer, Prepared, is_refusal
from citeline.answers.prompt import REFUSAL, check_citations, replace_citations
from citeline.answers.sentence_gate import SentenceGate, stream_through
from citeline.answers.verification import Verification
from citeline.contracts.generator import GenerationBackend, GenerationRequest
from citeline.settings import AnswerSettings
from citeline.tracing import capture, in_context, span, traced

__all__ = ["AnswerStream", "Answering", "CitationFilter"]

log = logging.getLogger("citeline.answers.assistant")  # the assistant's logger: a stream is one of its answers


class Answering(Protocol):
    """What a stream needs of the assistant that prepared it (:class:`citeline.answers.assistant.Assistant`)."""

    backend: GenerationBackend
    audit: AuditLog
    settings: AnswerSettings

    def busy_answer(self, p: Prepared) -> Verification: ...

    def generation_request(self, p: Prepared) -> GenerationRequest: ...

    def sentence_gate(self, p: Prepared) -> SentenceGate: ...

    def remember(self, p: Prepared, v: Verification, invalid: int, tokens: tuple[int, int], finish: str) -> None: ...


class AnswerStream:
    """Deltas of one answer (iterate it), then :attr:`answer` with citations and latency."""

    def __init__(self, assistant: Answering, prepared: Prepared, audit_id: int, t0: float,
                 release: Callable[[], None] | None = None) -> None:
        self._a = assistant
        # the generation slot taken for this stream: given back when the stream ends, is closed, or is
        # dropped unread (a client gone before the first byte)
        self._release = release or (lambda: None)
        weakref.finalize(self, self._release)
        self._p = prepared
        self._context = capture()  # the answer's trace and request id, carried to the thread that streams it
        self.audit_id = audit_id
        self._t0 = t0
        self.sources = prepared.sources
        self.refused = prepared.refused
        self.model = prepared.model
        self.model_note = prepared.note
        self.answer: Answer | None = None

    def close(self) -> None:
        """Give the generation slot back (also done when the stream ends or is dropped)."""
        self._release()

    def __iter__(self) -> Iterator[str]:
        try:  # each step runs in the answer's context (its trace and request id), on whichever thread reads
            yield from in_context(self._context, self._generate())
        finally:
            self._release()

    def _generate(self) -> Iterator[str]:
        with span("generate", streamed=True, model=self.model):  # generation and verification interleave
            yield from self._deltas()

    def _deltas(self) -> Iterator[str]:
        p = self._p
        a = self._a
        finish = "stop"
        busy = a.busy_answer(p) if p.busy else None
        hit = p.hit
        if p.refused:
            deltas: Iterator[str] = iter([REFUSAL])
        elif hit is not None:  # the answer cache's: generated and verified earlier from exactly this evidence
            deltas, finish = iter([hit.verification.text]), hit.finish_reason
        elif busy is not None:  # no generation slot: the extractive answer, verified by construction
            deltas = iter([busy.text])
        else:
            request = a.generation_request(p)
            deltas = a.backend.stream(request)
        t1 = time.perf_counter()
        filt = CitationFilter(len(p.sources))
        gate = a.sentence_gate(p) if not p.refused and busy is None and hit is None else None

        def raw() -> Iterator[str]:
            nonlocal finish
            result = yield from cast("Generator[str, None, str | None]", deltas)  # may return its finish reason
            if isinstance(result, str) and result:
                finish = result

        def filtered() -> Iterator[str]:
            for delta in raw():
                out = filt.feed(delta)
                if out:
                    yield out
            tail = filt.flush()
            if tail:
                yield tail

        parts: list[str] = []
        source = stream_through(gate, filtered()) if gate is not None else filtered()
        for out in source:
            parts.append(out)
            yield out
        self._release()  # generation is over: the slot is free before the closing audit row is written
        p.latency["generate_ms"] = (time.perf_counter() - t1) * 1000
        p.latency["total_ms"] = (time.perf_counter() - self._t0) * 1000
        v = gate.result if gate is not None else busy if hit is None else hit.verification
        text = "".join(parts).strip()
        if gate is not None and v is not None:  # completed normally: the cache may keep it (a.remember decides)
            p.latency["verify_ms"] = v.ms
            kept = replace(v, text=text, cited=check_citations(text, len(p.sources)).cited)  # what was delivered
            a.remember(p, kept, filt.invalid, (p.prompt.prompt_tokens if p.prompt else 0, a.backend.count_tokens(text)),
                       finish or "stop")
        elif v is not None and hit is None:
            p.latency["verify_ms"] = v.ms
        self._finish(text, v, filt.invalid if hit is None else hit.invalid, finish or "stop")

    @traced("audit")
    def _finish(self, text: str, v: Verification | None, invalid: int, finish: str) -> None:
        """:attr:`answer` from what was delivered, and (unless refused up front) the closing audit row."""
        p, a = self._p, self._a
        check = check_citations(text, len(p.sources))
        by_n = {c.n: c for c in p.sources}
        refused = p.refused or is_refusal(text)
        self.answer = Answer(p.question, text, refused,
                             tuple(by_n[n] for n in check.cited), p.sources, invalid, p.model, p.best,
                             {k: round(x, 2) for k, x in p.latency.items()}, self.audit_id, model_note=p.note,
                             verified=v.verified if v else refused and a.settings.verify != "off",
                             unsupported=v.unsupported if v else (), verify_policy=a.settings.verify,
                             fallback=v.fallback if v else False, finish_reason=finish,
                             retrieval_question=p.retrieval_question, cache=p.cache_state)
        if not p.refused:  # the first row had no text: record what was delivered and how it was verified
            try:
                a.audit.append("ask", "answer.end", principal=p.principal.user, team=p.principal.team,
                               payload={"answer_audit_id": self.audit_id, "answer": text,
                                        "invalid_citations": invalid, "finish_reason": finish,
                                        "verification": v.as_dict() if v else None,
                                        "latency_ms": {k: round(x, 2) for k, x in p.latency.items()}})
            except Exception:  # the answer is already delivered; the first row stands
                log.exception("could not audit the end of streamed answer %s", self.audit_id)


class CitationFilter:
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
