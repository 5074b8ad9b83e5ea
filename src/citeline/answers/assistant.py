"""Grounded answers: retrieve as the principal → refuse or prompt → generate → check citations → audit.

:class:`Assistant` is what ``citeline ask`` and the server call. Every answer (refusals included) writes
one audit row *before* it is returned; if the row cannot be written the answer is withheld
(:class:`citeline.errors.AuditError`). A streamed answer writes its row before the first delta (with the
sources it will show and the retrieval latency; the text is not known yet), so no byte reaches a client
unaudited.

Refusal: when the best visible chunk's cosine similarity to the question is below
``answer.min_score`` (or nothing is visible) the answer is :data:`citeline.answers.prompt.REFUSAL` with the
closest sources, and the model is not called. Citations ``[n]`` that name no evidence are removed from
the answer (also from a stream, as it is produced) and counted.

Verification (:mod:`citeline.answers.verification`, policy ``answer.verify``): every sentence of the model's
answer that states something must cite evidence that supports it; unsupported sentences are dropped,
flagged, or the answer is replaced by the extractive answer from the same evidence. Streams release a
sentence only once it is verified. A streamed answer writes a second audit row when it ends
(``answer.end``: the delivered text and its verification), referring to the first.

The parts: :mod:`citeline.answers.answer` (the :class:`Answer` returned), :mod:`citeline.answers.streaming`
(:class:`AnswerStream`), :mod:`citeline.answers.slots` (:class:`GenerationSlots`: how many generate at once).

Conversations: earlier turns (``history``) make a follow-up question standalone for retrieval
(:mod:`citeline.answers.conversation`) and go into the prompt; the audit row records the question retrieval used.

Cache (:mod:`citeline.answers.cache`): retrieval always runs; a greedy answer generated from exactly the same
prompt and evidence is reused (``cached`` in the answer and its audit row).
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Sequence
from typing import Any, cast

from citeline.access.audit import AuditLog
from citeline.answers.answer import Answer, Citation, Prepared, best_similarity, citation, is_refusal
from citeline.answers.cache import AnswerCache, CachedAnswer, request_key
from citeline.answers.extractive import answers_question, extractive_answer
from citeline.answers.lexical_verifier import LexicalVerifier, SentenceVectors
from citeline.answers.prompt import REFUSAL, build_prompt, check_citations
from citeline.answers.routing import ModelChoice, ModelRouter
from citeline.answers.sentence_gate import SentenceGate
from citeline.answers.slots import GenerationSlots
from citeline.answers.streaming import AnswerStream
from citeline.answers.verification import Verification, Verifier, verify_text
from citeline.contracts.generator import AdapterHost, ChatMessage, Generation, GenerationBackend, GenerationRequest
from citeline.domain import Principal, SearchMode
from citeline.errors import GenerationError, ModelNotFoundError, OverloadedError
from citeline.retrieval.search import Retriever
from citeline.settings import AnswerSettings, GenerationSettings
from citeline.tracing import annotate, span, traced

# Answer, AnswerStream and Citation are what ask() and stream() return: importable from here as well
__all__ = ["Answer", "AnswerStream", "Assistant", "Citation", "best_similarity"]

log = logging.getLogger(__name__)


def _cited(text: str) -> list[int]:
    return [int(n) for m in re.finditer(r"\[(\d{1,3}(?:\s*,\s*\d{1,3})*)\]", text) for n in m.group(1).split(",")]

class Assistant:
    """Answers questions for principals from what they may see."""

    def __init__(self, retriever: Retriever, backend: GenerationBackend, audit: AuditLog, *,
                 answer: AnswerSettings | None = None, generation: GenerationSettings | None = None,
                 router: ModelRouter | None = None, verifier: Verifier | None = None,
                 cache: AnswerCache | None = None) -> None:
        self.retriever = retriever
        self.cache = cache  # generated answers by what decided them (citeline.answers.cache); None: off
        self.router = router
        self.backend = backend
        self.audit = audit
        self.settings = answer or AnswerSettings()
        self.generation = generation or GenerationSettings()
        embedder = getattr(retriever, "embedder", None)
        self.verifier: Verifier = verifier or LexicalVerifier(embedder=embedder)
        # sentence vectors for the extractive answer (shared with the built-in verifier's cache)
        shared = getattr(self.verifier, "vectors", None)
        self.similarity: SentenceVectors | None = shared if isinstance(shared, SentenceVectors) else (
            SentenceVectors(embedder) if embedder is not None else None)
        limit = self.generation.max_concurrent or getattr(backend, "max_concurrency", None) or 8
        self.slots = GenerationSlots(limit, self.generation.queue_timeout_s, self.generation.max_waiting)
        self._unservable: set[str] = set()  # adapters routed to a backend that serves none (logged once)
        if getattr(backend, "extractive", False):  # a backend that answers extractively uses the same rules
            cast(Any, backend).configure(similarity=self.similarity, min_coverage=self.settings.answerable_coverage,
                              min_similarity=self.settings.answerable_similarity)

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
        if choice.adapter is not None and not getattr(self.backend, "serves_adapters", True):
            # a backend without adapters (extractive) answers with its base: said in the answer, logged once
            note = (f"adapter {choice.model!r} of team {choice.adapter.team!r} was not used: the "
                    f"{self.backend.name} backend serves no adapters; answered by {base!r}")
            if choice.model not in self._unservable:
                self._unservable.add(choice.model)
                log.warning("%s (use a backend that serves adapters: generation.backend embedded or openai)", note)
            return ModelChoice(base, note=note)
        if choice.adapter is not None:
            if isinstance(self.backend, AdapterHost) and choice.model not in self.backend.adapters():
                self.backend.load_adapter(choice.model, choice.adapter.path)  # preflighted when registered
            return choice  # a remote server reports a missing adapter itself (ModelNotFoundError)
        served = self.backend.models()
        if choice.model not in served:
            # only what this principal may use (as /v1/models lists): never another team's adapters
            mine = [m for m in served if self.router is None or self.router.may_use(principal, m)]
            raise ModelNotFoundError(f"model {choice.model!r} is not served by the {self.backend.name} backend "
                                     f"(available: {', '.join(mine)})")
        return choice

    def _standalone(self, question: str, history: tuple[ChatMessage, ...]) -> tuple[str, str]:
        if not history:
            return question, "none"
        from citeline.answers.conversation import standalone_question

        mode = self.settings.rewrite
        use_model = mode == "model" or (mode == "auto" and self.backend.name == "openai")
        rewrite = standalone_question(question, history, self.backend if use_model else None)
        return rewrite.question, rewrite.method

    def _prepare(self, question: str, principal: Principal, model: str | None, *,
                 history: Sequence[ChatMessage] = (), max_tokens: int | None = None,
                 temperature: float | None = None, stop: Sequence[str] = ()) -> Prepared:
        choice = self.resolve_model(principal, model)
        history = tuple(m for m in history if m.role in ("user", "assistant"))
        t0 = time.perf_counter()
        standalone, method = self._standalone(question, history)
        rewrite_ms = (time.perf_counter() - t0) * 1000
        with span("retrieve", mode=SearchMode.HYBRID.value, k=self.settings.evidence_k) as s:
            result = self.retriever.search(standalone, user=principal.user, k=self.settings.evidence_k,
                                           mode=SearchMode.HYBRID)
            s.set_attributes({"citeline.hits": len(result.hits), "citeline.embed_ms": result.embed_ms,
                              "citeline.sql_ms": result.db_ms, "citeline.rewrite": method})
        best = best_similarity(result.hits)
        refused = best is None or best < self.settings.min_score
        t1 = time.perf_counter()
        if refused:
            ranked = sorted(result.hits, key=lambda h: h.dense_distance if h.dense_distance is not None else 9)
            sources = tuple(citation(i, h) for i, h in enumerate(ranked[: self.settings.refusal_sources], 1))
            prompt = None
        else:
            extra: dict[str, Any] = {}
            if history:
                from citeline.answers.history import prompt_history

                extra["history"] = prompt_history(history, self.backend.count_tokens, self.settings.history_tokens)
            prompt = build_prompt(question, result.hits, self.backend.count_tokens,
                                  evidence_tokens=self.generation.evidence_tokens, **extra)
            by_chunk = {h.chunk_id: h for h in result.hits}
            sources = tuple(citation(e.n, by_chunk[e.chunk_id]) for e in prompt.evidence)
        latency = {"embed_ms": result.embed_ms, "retrieve_ms": result.db_ms,
                   "prompt_ms": (time.perf_counter() - t1) * 1000}
        if history:
            latency["rewrite_ms"] = rewrite_ms
        return Prepared(question, principal, choice.model, result.hits, best, refused, prompt, sources, latency,
                         choice.note, standalone, method, history, max_tokens, temperature, tuple(stop))

    def _slot(self, p: Prepared) -> Callable[[], None] | None:
        """A generation slot's release, or None when none freed in time and ``generation.when_busy`` is
        ``extractive``: the answer is then the extractive answer from the same evidence (verified by
        construction: whole evidence sentences with their own citations), not a 503."""
        try:
            return self.slots.acquire()
        except OverloadedError:
            if self.generation.when_busy != "extractive":
                raise
            p.busy = True
            busy = ("the model was busy (generation.max_concurrent, generation.queue_timeout_s, "
                    "generation.max_waiting): answered with the extractive answer from the evidence shown")
            p.note = f"{p.note}; {busy}" if p.note else busy
            return None

    def busy_answer(self, p: Prepared) -> Verification:
        t = time.perf_counter()
        text = self._extractive(p)()
        check = check_citations(text, len(p.sources))
        return Verification(check.text, self.settings.verify, verified=True, fallback=True, cited=check.cited,
                            ms=(time.perf_counter() - t) * 1000)

    def generation_request(self, p: Prepared) -> GenerationRequest:
        assert p.prompt is not None
        limit = self.generation.max_tokens if p.max_tokens is None else min(p.max_tokens, self.generation.max_tokens)
        return GenerationRequest(p.prompt.messages, model=None if p.model == self.backend.base_model else p.model,
                                 max_tokens=limit,
                                 temperature=self.generation.temperature if p.temperature is None else p.temperature,
                                 stop=p.stop, question=p.retrieval_question or p.question, evidence=p.prompt.evidence,
                                 user_question=p.question)

    def _lookup(self, p: Prepared, *, lead: bool = False) -> Callable[[], None] | None:
        """The answer cache's key for a prompted, greedy answer (sampled ones are not cached), and its entry; with
        ``lead`` (whole answers) a single flight: returns the function that ends it, if this request leads."""
        if self.cache is None or p.prompt is None or p.busy:
            return None
        if (request := self.generation_request(p)).temperature != 0:
            return None  # sampled answers are not cached
        p.cache_key = request_key(request, backend=self.backend.name, model=p.model, settings=self.settings,
                                  verifier=self.verifier)
        p.hit, land = self.cache.find(p.cache_key, lead=lead, wait_s=self.generation.queue_timeout_s)
        return land

    def remember(self, p: Prepared, v: Verification, invalid: int, tokens: tuple[int, int], finish: str) -> None:
        """Keep a generated, verified answer under its key (not the extractive answer of a busy model)."""
        if self.cache is not None and p.cache_key is not None and p.hit is None and not p.busy:
            self.cache.put(p.cache_key, CachedAnswer(v, invalid, *tokens, finish, p.stopped_early), model=p.model)

    @traced("generate")
    def _generate(self, p: Prepared) -> Generation:
        """The model's whole answer; under ``fallback`` a base-model answer is streamed and judged sentence by
        sentence, and generation stops once ``answer.early_fallback`` sentences are unsupported and none is
        supported (the extractive answer will replace it anyway: seconds saved on a CPU)."""
        request = self.generation_request(p)
        annotate(model=p.model, backend=self.backend.name, max_tokens=request.max_tokens)
        early = self.settings.early_fallback
        if self.settings.verify != "fallback" or not early or p.model != self.backend.base_model:
            return self.backend.generate(request)
        gate = self.sentence_gate(p)
        parts: list[str] = []
        finish = "stop"
        deltas = self.backend.stream(request)
        try:
            while True:
                try:
                    delta = next(deltas)
                except StopIteration as end:
                    finish = end.value if isinstance(end.value, str) and end.value else "stop"
                    break
                parts.append(delta)
                gate.feed(delta)
                if gate.supported == 0 and gate.stating - gate.supported >= early:
                    finish = "stop"
                    p.stopped_early = True
                    break
        finally:
            close = getattr(deltas, "close", None)
            if close is not None:
                close()  # stops the model
        text = "".join(parts)
        return Generation(text, p.model, p.prompt.prompt_tokens if p.prompt else 0, self.backend.count_tokens(text),
                          finish)

    def _extractive(self, p: Prepared) -> Callable[[], str]:
        """The extractive answer from the evidence shown (the verified fallback), computed on demand."""
        evidence = p.prompt.evidence if p.prompt is not None else ()
        question = p.retrieval_question or p.question
        focus = p.question if question != p.question else None
        return lambda: extractive_answer(question, evidence, similarity=self.similarity,
                                         min_coverage=self.settings.answerable_coverage,
                                         min_similarity=self.settings.answerable_similarity, focus=focus)

    @traced("verify")
    def _verify(self, p: Prepared, text: str) -> Verification:
        evidence = p.prompt.evidence if p.prompt is not None else ()
        question = p.retrieval_question or p.question
        fallback = self._extractive(p)
        return verify_text(text, question=question, evidence=evidence, verifier=self.verifier,
                           policy=self.settings.verify, min_supported=self.settings.min_supported,
                           repair=self.settings.repair_citations, fallback=fallback,
                           relevant=self._relevant(p))

    def _relevant(self, p: Prepared) -> Callable[[Sequence[str]], bool]:
        """Whether verified sentences (with their ``[n]``) address the question: the extractive answer's
        answerability measure, with the cited documents' titles and section headings ("Price: £1200" under
        "Vacuum gripper") counting as what the sentences are about."""
        evidence = p.prompt.evidence if p.prompt is not None else ()
        question = p.retrieval_question or p.question
        focus = p.question if question != p.question else None

        def check(sentences: Sequence[str]) -> bool:
            cited = {n for s in sentences for n in _cited(s)}
            titles = [t for e in evidence if e.n in cited
                      for t in (e.title, *re.findall(r"(?m)^\s{0,3}#{1,6}\s+(.+)$", e.text))]
            return answers_question(question, sentences, evidence, similarity=self.similarity,
                                    min_coverage=self.settings.answerable_coverage,
                                    min_similarity=self.settings.answerable_similarity, focus=focus,
                                    cited_titles=titles)

        return check

    def sentence_gate(self, p: Prepared) -> SentenceGate:
        evidence = p.prompt.evidence if p.prompt is not None else ()
        question = p.retrieval_question or p.question
        return SentenceGate(question, evidence, self.verifier, self.settings.verify,
                            repair=self.settings.repair_citations,
                            fallback=self._extractive(p), relevant=self._relevant(p))

    @traced("audit")
    def _audit(self, p: Prepared, *, text: str | None, invalid: int, streamed: bool, extra: dict[str, float],
               verification: Verification | None = None) -> int:
        payload = p.audit_payload(text=text, invalid=invalid, streamed=streamed, extra=extra,
                                  verification=verification)
        return self.audit.append("ask", "answer", principal=p.principal.user, team=p.principal.team,
                                 payload=payload).id

    # -- public ------------------------------------------------------------------------------------
    @traced("answer", request=True)
    def ask(self, question: str, principal: Principal, *, model: str | None = None,
            history: Sequence[ChatMessage] = (), max_tokens: int | None = None, temperature: float | None = None,
            stop: Sequence[str] = ()) -> Answer:
        """Answer ``question`` for ``principal``: retrieve, generate, verify, audit (see the module docstring).

        ``history`` is the conversation before this question (user and assistant turns); ``max_tokens``
        (capped by ``generation.max_tokens``), ``temperature`` and ``stop`` override the settings for this
        answer.
        """
        t0 = time.perf_counter()
        p = self._prepare(question, principal, model, history=history, max_tokens=max_tokens,
                          temperature=temperature, stop=stop)
        gen_tokens = (0, 0)
        finish = "stop"
        v: Verification | None = None
        cited: tuple[int, ...] = ()
        if p.refused:
            text, invalid = REFUSAL, 0
        else:
            v, invalid, gen_tokens, finish = self._answer(p)
            text, cited = v.text, v.cited
            p.refused = is_refusal(text)  # the model itself may decline from the evidence
        t2 = time.perf_counter()
        audit_id = self._audit(p, text=text, invalid=invalid, streamed=False,
                               extra={"total_ms": (t2 - t0) * 1000}, verification=v)
        p.latency["audit_ms"] = (time.perf_counter() - t2) * 1000
        p.latency["total_ms"] = (time.perf_counter() - t0) * 1000
        annotate(model=p.model, refused=p.refused, cache=p.cache_state, audit_id=audit_id, finish_reason=finish)
        by_n = {c.n: c for c in p.sources}
        return Answer(question, text, p.refused, tuple(by_n[n] for n in cited), p.sources, invalid, p.model,
                      p.best, {k: round(x, 2) for k, x in p.latency.items()}, audit_id, *gen_tokens, p.note,
                      verified=v.verified if v else p.refused and self.settings.verify != "off",
                      unsupported=v.unsupported if v else (), verify_policy=self.settings.verify,
                      fallback=v.fallback if v else False, finish_reason=finish,
                      retrieval_question=p.retrieval_question, stopped_early=p.stopped_early, cache=p.cache_state)

    def _answer(self, p: Prepared) -> tuple[Verification, int, tuple[int, int], str]:
        """The cache's answer, or :meth:`_generated`: (verification, invalid citations, tokens, finish reason)."""
        land = self._lookup(p, lead=True)
        if (h := p.hit) is not None:
            p.stopped_early = h.stopped_early
            return h.verification, h.invalid, (h.prompt_tokens, h.completion_tokens), h.finish_reason
        try:
            return self._generated(p)
        finally:
            if land is not None:
                land()

    def _generated(self, p: Prepared) -> tuple[Verification, int, tuple[int, int], str]:
        """Generate and verify (the extractive answer when no generation slot is free)."""
        t1 = time.perf_counter()
        release = self._slot(p)
        p.latency["queue_ms"] = (time.perf_counter() - t1) * 1000
        if release is None:
            v = self.busy_answer(p)
            p.latency["verify_ms"] = v.ms
            return v, 0, (0, 0), "stop"
        try:
            gen = self._generate(p)
        finally:
            release()
        p.latency["generate_ms"] = (time.perf_counter() - t1) * 1000 - p.latency["queue_ms"]
        if gen.model != p.model:  # every answer comes from exactly the model it was routed to
            raise GenerationError(f"the {self.backend.name} backend answered with model {gen.model!r} for "
                                  f"a request routed to {p.model!r}; check the model server's served names")
        check = check_citations(gen.text, len(p.sources))
        v = self._verify(p, check.text)
        p.latency["verify_ms"] = v.ms
        self.remember(p, v, check.invalid, (gen.prompt_tokens, gen.completion_tokens), gen.finish_reason)
        return v, check.invalid, (gen.prompt_tokens, gen.completion_tokens), gen.finish_reason

    @traced("answer", request=True)
    def stream(self, question: str, principal: Principal, *, model: str | None = None,
               history: Sequence[ChatMessage] = (), max_tokens: int | None = None, temperature: float | None = None,
               stop: Sequence[str] = ()) -> AnswerStream:
        """Retrieve, audit, then return a stream whose deltas can be sent as they come (each sentence once
        it is verified)."""
        t0 = time.perf_counter()
        p = self._prepare(question, principal, model, history=history, max_tokens=max_tokens,
                          temperature=temperature, stop=stop)
        self._lookup(p)  # a cached answer needs no generation slot
        release = None if p.refused or p.hit else self._slot(p)  # OverloadedError (when_busy = reject) first
        try:
            audit_id = self._audit(p, text=REFUSAL if p.refused else None, invalid=0, streamed=True,
                                   extra={"before_stream_ms": (time.perf_counter() - t0) * 1000})
        except BaseException:
            if release is not None:
                release()
            raise
        return AnswerStream(self, p, audit_id, t0, release)
