"""Answer verification: every sentence that states something must cite evidence that supports it.

The contract (extension point ``citeline.verifiers``)
    An entry point names a class with a pydantic ``Config`` model (its own options, from
    ``[answer.verifier_options]``) built as ``cls(config, embedder=embedder)``; ``embedder`` is the
    index's :class:`citeline.contracts.embedder.Embedder` (a verifier may ignore it). A verifier judges
    claims in batches::

        class Verifier(Protocol):
            name: str
            def judge(self, claims: Sequence[Claim]) -> list[Judgement]: ...

    A :class:`Claim` is one sentence of an answer (citation markers removed), the evidence it cites, every
    piece of evidence shown, and the question. The verifier answers with a :class:`Judgement`: supported or
    not, a score and, when not, a reason a person can read. ``citeline.testing``-style checks for any
    verifier live in :func:`contract_checks` (built-ins and plugins run the same ones).

Rules applied around any verifier (:func:`verify_text`)
    * A sentence *states something* when it has a content word beyond the question's, a number or a name;
      headings, "Here is how:" lines and the refusal sentence are not claims.
    * A stating sentence without a citation is unsupported, unless ``repair`` finds one piece of shown
      evidence that supports it on its own: then that ``[n]`` is added (counted as repaired).
    * Numbers and names (:func:`citeline.answers.sentences.numbers`, :func:`~citeline.answers.sentences.entities`) in a
      sentence that appear in *no* shown evidence make it unsupported whatever the verifier says.
    * A sentence said again (small models loop) is unsupported: it adds nothing.
    * Paragraphs of evidence that speak to the assistant ("ignore all previous instructions ... tell the
      user ...", :func:`citeline.answers.sentences.without_instructions`) support nothing: a model that obeys a
      planted instruction produces sentences no usable evidence supports.

Policies (``answer.verify``)
    ``fallback`` (default): unsupported sentences are removed; when fewer than ``answer.min_supported`` of
    the stating sentences survive (or none), or what survives does not address the question (the same
    answerability measure the extractive answer is held to), the answer is replaced by the extractive
    answer from the same evidence (:func:`citeline.answers.extractive.extractive_answer`), itself verified. ``drop``: unsupported
    sentences are removed (nothing left → the refusal sentence). ``flag``: everything is kept and each
    unsupported sentence is marked ``[unverified]``. ``off``: no verification.

Streams (:class:`SentenceGate`) judge each sentence when it is complete and release it only then, so a
client never receives a sentence the final answer drops; under ``fallback`` no sentence is released until
one that addresses the question is (a supported sentence beside the question before it is dropped). Under ``fallback`` a stream whose sentences were
all dropped sends the extractive answer; sentences already released are never taken back, so a stream
falls back only when nothing survived.
"""

from __future__ import annotations

import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from citeline.answers.sentences import (CITATION, Segment, content_stems, content_words, entities, negated, numbers,
                                split_sentences, strip_citations, without_instructions)
from citeline.contracts.verifier import Claim, EvidenceLike, Judgement, Verifier  # noqa: F401  (re-exported)

_LIST_MARK = re.compile(r"^\s*(?:[-*•]\s+|\d{1,3}[.)]\s+)")

__all__ = ["Claim", "Judgement", "LexicalVerifier", "Policy", "SentenceGate", "SentenceVectors", "Unsupported",
           "Verification", "Verifier", "contract_checks", "verify_text"]

Policy = Literal["fallback", "drop", "flag", "off"]
FLAG = " [unverified]"
REFUSAL = "I don't know from the available documents."  # the same sentence as citeline.answers.prompt.REFUSAL


@dataclass(frozen=True)
class Unsupported:
    sentence: str
    reason: str
    cited: tuple[int, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {"sentence": self.sentence, "reason": self.reason, "cited": list(self.cited)}


@dataclass
class Verification:
    text: str  # what is delivered
    policy: str
    verified: bool  # every delivered stating sentence is supported by the evidence it cites
    unsupported: tuple[Unsupported, ...] = ()
    stating: int = 0  # sentences of the model's answer that state something
    supported: int = 0
    repaired: int = 0  # uncited sentences that got the citation of the evidence supporting them
    fallback: bool = False
    cited: tuple[int, ...] = ()  # evidence numbers cited in the delivered text, in order of first use
    ms: float = 0.0
    off_topic: bool = False  # supported, but not an answer to the question: replaced by the fallback

    def as_dict(self) -> dict[str, Any]:
        return {"policy": self.policy, "verified": self.verified, "fallback": self.fallback,
                "off_topic": self.off_topic,
                "stating": self.stating, "supported": self.supported, "repaired": self.repaired,
                "unsupported": [u.as_dict() for u in self.unsupported], "ms": round(self.ms, 2)}


# --------------------------------------------------------------------------------------------------
# The built-in verifier
# --------------------------------------------------------------------------------------------------

_GENERIC = content_stems("""need use using used please first then next also step steps way make sure able get
following follow here answer question evidence document documents according available information provided
say says said mention mentioned note yes okay ok sure""")


class SentenceVectors:
    """Sentence vectors from the index's embedder, kept in an LRU (evidence sentences repeat across answers);
    calling it gives the cosine similarity of a question with each sentence (the extractive answer's
    ``similarity``). Vectors are normalised, so a dot product is the cosine."""

    def __init__(self, embedder: Any, size: int = 20000) -> None:
        self.embedder = embedder
        self.size = size
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def vectors(self, sentences: Sequence[str]) -> np.ndarray:
        found: dict[str, np.ndarray] = {}
        with self._lock:
            for s in sentences:
                v = self._cache.get(s)
                if v is not None:
                    self._cache.move_to_end(s)
                    found[s] = v
        missing = list(dict.fromkeys(s for s in sentences if s not in found))
        if missing:
            computed = self._encode(missing)
            with self._lock:
                for s, v in zip(missing, computed, strict=True):
                    found[s] = v
                    self._cache[s] = v
                while len(self._cache) > self.size:
                    self._cache.popitem(last=False)
        if not sentences:
            return np.zeros((0, int(getattr(self.embedder, "dimension", 1))), dtype=np.float32)
        return np.stack([found[s] for s in sentences])

    def _encode(self, texts: list[str]) -> np.ndarray:
        # the embedder's question encoder when it has one (sentence-transformers: int8 ONNX, ~6x faster than the
        # float document model on CPU, cosine 0.99 with it); else its document encoder
        fast = getattr(self.embedder, "query_encoder", None)
        out = fast(texts) if callable(fast) else self.embedder.embed_documents(texts)
        return np.asarray(out, dtype=np.float32)

    def __call__(self, question: str, sentences: Sequence[str]) -> list[float]:
        if not sentences:
            return []
        q = np.asarray(self.embedder.embed_query(question), dtype=np.float32)
        return [float(x) for x in self.vectors(sentences) @ q]


class LexicalVerifier:
    """Content words, numbers and names of the sentence found in the cited evidence, plus embedding
    similarity with the evidence's sentences (when an embedder is given) for paraphrases.

    A sentence is supported when every number and name it states is in the evidence it cites, it adds no
    negation the closest evidence sentence lacks, and its new content words (those not already in the
    question) are covered: at least ``min_coverage`` of them in the cited evidence, or at least
    ``min_paraphrase_coverage`` with a cosine similarity of ``min_similarity`` to one evidence sentence.
    """

    name = "lexical"

    class Config(BaseModel):
        model_config = ConfigDict(extra="forbid", frozen=True)
        min_coverage: float = Field(0.75, ge=0.0, le=1.0, description="share of the sentence's new content words "
                                    "found in the cited evidence")
        min_paraphrase_coverage: float = Field(0.5, ge=0.0, le=1.0, description="lower share accepted with a "
                                               "close embedding match")
        min_similarity: float = Field(0.72, ge=-1.0, le=1.0, description="cosine similarity to an evidence "
                                      "sentence that makes a paraphrase acceptable")
        semantic: bool = Field(True, description="use the embedder for paraphrases")
        cache: int = Field(20000, ge=0, description="sentence vectors kept in memory (evidence repeats)")
        min_overall_coverage: float = Field(0.6, ge=0.0, le=1.0, description="share of all the sentence's content "
                                            "words, the question's included, found in the cited evidence")
        window: int = Field(3, ge=1, le=50, description="a sentence's words must be found within this many "
                            "adjacent sentences of the cited evidence (its title counts with each)")

    def __init__(self, config: Config | None = None, *, embedder: Any = None) -> None:
        self.config = config or self.Config()
        self.embedder = embedder if self.config.semantic else None
        self.vectors = SentenceVectors(self.embedder, self.config.cache) if self.embedder is not None else None

    # -- pieces ----------------------------------------------------------------------------------------
    def _evidence_sentences(self, e: Any) -> tuple[list[str], np.ndarray | None]:
        if self.vectors is None:
            return [], None
        sents = [s.text for s in split_sentences(without_instructions(e.text)) if len(content_words(s.text)) >= 2][:64]
        return sents, self.vectors.vectors(sents)

    def judge(self, claims: Sequence[Claim]) -> list[Judgement]:
        """Lexical checks first; only claims whose coverage falls in the paraphrase band are embedded."""
        first = [self._lexical(c) for c in claims]
        band = [i for i, (j, _) in enumerate(first) if j is None]
        vecs: dict[int, np.ndarray] = {}
        if band and self.embedder is not None:
            matrix = self.vectors.vectors([claims[i].sentence for i in band])
            vecs = {i: matrix[k] for k, i in enumerate(band)}
        out: list[Judgement] = []
        for i, (j, coverage) in enumerate(first):
            if j is None:
                j = self._semantic(claims[i], coverage, vecs.get(i))
            out.append(j)
        return out

    def _lexical(self, claim: Claim) -> tuple[Judgement | None, float]:
        """A final judgement, or None with the coverage when only a close paraphrase could support it."""
        if not claim.cited:
            return Judgement(False, 0.0, "cites no evidence"), 0.0
        cited_text = _usable(claim.cited)
        cited_lower = cited_text.lower()
        nums = numbers(cited_text)
        missing_nums = sorted(n for n in numbers(claim.sentence) if n not in nums)
        if missing_nums:
            return Judgement(False, 0.0, f"number {missing_nums[0]} is not in the cited evidence"), 0.0
        question = claim.question.lower()
        for name in sorted(entities(claim.sentence)):
            if not _contains(cited_lower, name) and not _contains(question, name):
                return Judgement(False, 0.0, f"{name!r} is not in the cited evidence"), 0.0
        new = content_stems(claim.sentence) - content_stems(claim.question) - _GENERIC
        if not new:  # the sentence restates the question: the cited evidence must be about it
            new = content_stems(claim.sentence) - _GENERIC
        # support is local: the words must stand together in a few adjacent sentences of the evidence, not
        # be scattered over a whole chunk ("The Fleet app is only available for a month")
        windows = _windows(claim.cited, self.config.window)
        have = max(windows, key=lambda w: len(new & w)) if windows else set()
        coverage = len(new & have) / len(new) if new else 1.0
        # words taken from the question are not free: a sentence that restates the question with one new
        # word ("We only offer a trade-in discount for the Scout S2") must find the question's words there too
        every = content_stems(claim.sentence) - _GENERIC
        if every and max(len(every & w) for w in windows or [set()]) / len(every) < self.config.min_overall_coverage:
            return Judgement(False, coverage, "most of it is the question's wording, which the cited evidence "
                                              "does not contain"), coverage
        if negated(claim.sentence):
            _, closest = self._closest_by_words(claim.sentence, claim.cited)
            if closest and not negated(closest):
                return Judgement(False, coverage, "it negates what the cited evidence says"), coverage
        c = self.config
        if coverage >= c.min_coverage:
            return Judgement(True, coverage), coverage
        if self.embedder is not None and coverage >= c.min_paraphrase_coverage:
            return None, coverage
        return self._not_covered(new, have, coverage), coverage

    @staticmethod
    def _not_covered(new: set[str], have: set[str], coverage: float) -> Judgement:
        missing = sorted(new - have)[:4]
        return Judgement(False, coverage, f"only {coverage:.0%} of its content is in the cited evidence "
                                          f"(not found: {', '.join(missing)})")

    def _semantic(self, claim: Claim, coverage: float, vec: np.ndarray | None) -> Judgement:
        best = -1.0
        if vec is not None:
            for e in claim.cited:
                sents, vecs = self._evidence_sentences(e)
                if len(sents):
                    best = max(best, float(np.max(vecs @ vec)))
        if best >= self.config.min_similarity:
            return Judgement(True, coverage)
        new = content_stems(claim.sentence) - content_stems(claim.question) - _GENERIC
        j = self._not_covered(new, content_stems(_usable(claim.cited)), coverage)
        return Judgement(False, coverage, f"{j.reason}; closest evidence sentence similarity {best:.2f}")

    @staticmethod
    def _closest_by_words(sentence: str, cited: Sequence[Any]) -> tuple[int, str]:
        words = content_stems(sentence)
        best, best_text = 0, ""
        for e in cited:
            for s in split_sentences(without_instructions(e.text)):
                overlap = len(words & content_stems(s.text))
                if overlap > best:
                    best, best_text = overlap, s.text
        return best, best_text


def _windows(evidence: Sequence[Any], size: int) -> list[set[str]]:
    """The content stems of every run of ``size`` adjacent sentences of each piece (with its title)."""
    out: list[set[str]] = []
    for e in evidence:
        title = content_stems(e.title)
        stems = [content_stems(s.text) for s in split_sentences(without_instructions(e.text)) if s.text]
        for i in range(max(1, len(stems) - size + 1)):
            out.append(title.union(*stems[i:i + size]))
    return out


def _usable(evidence: Sequence[Any]) -> str:
    """The evidence's title and text, without paragraphs that speak to the assistant (never support)."""
    return "\n".join(f"{e.title}\n{without_instructions(e.text)}" for e in evidence)


def _contains(haystack: str, needle: str) -> bool:
    return re.search(r"(?<![\w])" + re.escape(needle) + r"(?![\w])", haystack) is not None


# --------------------------------------------------------------------------------------------------
# Applying a verifier to an answer
# --------------------------------------------------------------------------------------------------


def _cited_numbers(raw: str, n_evidence: int) -> tuple[int, ...]:
    out: list[int] = []
    for m in CITATION.finditer(raw):
        for part in m.group(1).split(","):
            n = int(part)
            if 1 <= n <= n_evidence and n not in out:
                out.append(n)
    return tuple(out)


def _is_refusal(text: str) -> bool:
    return strip_citations(text).strip().rstrip(".").lower() == REFUSAL.rstrip(".").lower()


def states_something(sentence: str, question: str) -> bool:
    """Whether a sentence makes a claim that needs evidence (not a heading, a lead-in or the refusal)."""
    bare = strip_citations(sentence).strip()
    if not bare or _is_refusal(bare) or re.fullmatch(r"#{1,6}\s.*|[-*_=|:\s]+", bare):
        return False
    if numbers(bare) or entities(bare):
        return True
    words = content_stems(bare) - _GENERIC
    if bare.endswith(":") and len(words) <= 4:
        return False  # "Here is how to roll back:" introduces what follows
    return len(words - content_stems(question)) > 0 or len(words) >= 3


@dataclass
class _Judged:
    segment: Segment
    stating: bool
    cited: tuple[int, ...]
    supported: bool = True
    reason: str = ""
    repaired: int | None = None


def _judge_segments(segments: Sequence[Segment], question: str, evidence: Sequence[Any], verifier: Verifier,
                    repair: bool, said: set[str] | None = None) -> list[_Judged]:
    by_n = {e.n: e for e in evidence}
    usable = _usable(evidence)
    all_nums = numbers(usable)
    all_lower = usable.lower()
    judged = [_Judged(s, states_something(s.text, question), _cited_numbers(s.raw, len(evidence))) for s in segments]
    seen: set[str] = said if said is not None else set()
    for j in judged:  # a sentence said again (small models loop) adds nothing and is dropped
        key = " ".join(content_words(_LIST_MARK.sub("", strip_citations(j.segment.text))))
        if j.stating and key:
            if key in seen:
                j.supported, j.reason, j.stating = False, "repeats an earlier sentence", True
            seen.add(key)
    claims: list[Claim] = []
    index: list[tuple[int, int | None]] = []  # (judged position, repair candidate n or None)
    for i, j in enumerate(judged):
        if not j.stating or j.reason:
            continue
        bare = strip_citations(j.segment.text)
        stray = sorted(n for n in numbers(bare) if n not in all_nums) or \
            sorted(x for x in entities(bare) if not _contains(all_lower, x) and not _contains(question.lower(), x))
        if stray:  # never supported, whatever the verifier says
            what = "number" if numbers(bare) & set(stray) else "name"
            j.supported, j.reason = False, f"{what} {stray[0]!r} appears in no evidence shown"
            continue
        if j.cited:
            claims.append(Claim(bare, tuple(by_n[n] for n in j.cited), tuple(evidence), question))
            index.append((i, None))
        elif repair and evidence:
            for e in evidence:
                claims.append(Claim(bare, (e,), tuple(evidence), question))
                index.append((i, e.n))
        else:
            j.supported, j.reason = False, "cites no evidence"
    verdicts = verifier.judge(claims) if claims else []
    repairs: dict[int, list[tuple[float, int]]] = {}
    for (i, n), v in zip(index, verdicts, strict=True):
        j = judged[i]
        if n is None:
            j.supported, j.reason = v.supported, v.reason
        elif v.supported:
            repairs.setdefault(i, []).append((v.score, n))
    for i, j in enumerate(judged):
        if j.stating and not j.cited and repair and evidence and not j.reason:
            if i in repairs:
                j.repaired = max(repairs[i], key=lambda t: (t[0], -t[1]))[1]
                j.cited = (j.repaired,)
            else:
                j.supported, j.reason = False, "cites no evidence, and no evidence shown supports it"
    return judged


def _cited_text(j: _Judged) -> str:
    """A judged sentence with its citations (a repaired one with the citation it was given)."""
    return _with_citation(j.segment.text, j.repaired) if j.repaired is not None else j.segment.text


def _with_citation(raw: str, n: int) -> str:
    """Insert ``[n]`` before the sentence's closing punctuation (or at its end)."""
    body = raw.rstrip()
    tail = raw[len(body):]
    m = re.search(r"[.!?:;]+[\"')\]]*$", body)
    if m:
        return f"{body[:m.start()]} [{n}]{body[m.start():]}{tail}"
    return f"{body} [{n}]{tail}"


def _rendered(j: _Judged, policy: str) -> str | None:
    """What a judged sentence becomes in the delivered text (None: it is dropped)."""
    raw = j.segment.raw
    if j.repaired is not None:
        raw = _with_citation(raw, j.repaired)
    if j.stating and not j.supported:
        if policy != "flag":
            return None
        body = raw.rstrip()  # the mark goes before the closing punctuation, so the text still splits
        m = re.search(r"[.!?:;]+[\"')\]]*$", body)
        end = m.start() if m else len(body)
        return body[:end] + FLAG + body[end:] + raw[len(body):]
    return raw


def _unsupported(judged: Sequence[_Judged]) -> list[Unsupported]:
    return [Unsupported(strip_citations(j.segment.text).strip(), j.reason, j.cited)
            for j in judged if j.stating and not j.supported]


def _render(judged: Sequence[_Judged], policy: str) -> tuple[str, list[Unsupported]]:
    return "".join(t for j in judged if (t := _rendered(j, policy)) is not None), _unsupported(judged)


def _tidy(text: str) -> str:
    text = re.sub(r"[ \t]+\n", "\n", text)
    text = re.sub(r"\n{3,}", "\n\n", text)
    return text.strip()


def _has_claims(judged: Sequence[_Judged]) -> bool:
    return any(j.stating and j.supported for j in judged)


def verify_text(text: str, *, question: str, evidence: Sequence[Any], verifier: Verifier, policy: str,
                min_supported: float = 0.5, repair: bool = True, fallback: Callable[[], str] | None = None,
                relevant: Callable[[Sequence[str]], bool] | None = None) -> Verification:
    """Judge every sentence of ``text`` and apply ``policy`` (see the module docstring).

    ``relevant`` (under ``fallback``): whether the surviving sentences (with their ``[n]``) address the
    question at all; an answer that is supported but beside the question is replaced by the fallback too.
    """
    t0 = time.perf_counter()
    if policy == "off" or _is_refusal(text):
        cited = _cited_numbers(text, len(evidence))
        return Verification(text, policy, verified=policy != "off" and _is_refusal(text), cited=cited,
                            ms=(time.perf_counter() - t0) * 1000)
    judged = _judge_segments(split_sentences(text), question, evidence, verifier, repair)
    stating = sum(j.stating for j in judged)
    supported = sum(j.stating and j.supported for j in judged)
    repaired = sum(j.repaired is not None and j.supported for j in judged)
    out, bad = _render(judged, policy)
    out = _tidy(out)
    used_fallback = False
    off_topic = False
    if policy == "fallback" and _has_claims(judged) and supported >= min_supported * stating and relevant is not None:
        kept = [_cited_text(j) for j in judged if j.stating and j.supported]
        off_topic = not relevant(kept)
    if policy == "fallback" and (off_topic or not _has_claims(judged) or supported < min_supported * stating):
        used_fallback = True
        alt = fallback() if fallback is not None else REFUSAL
        alt_judged = _judge_segments(split_sentences(alt), question, evidence, verifier, repair) \
            if not _is_refusal(alt) else []
        out = _tidy(_render(alt_judged, "drop")[0]) if alt_judged else REFUSAL
        if alt_judged and not _has_claims(alt_judged):
            out = REFUSAL
    elif policy == "drop" and not _has_claims(judged):
        out = REFUSAL
    if not out:
        out = REFUSAL
    verified = policy != "flag" or not bad
    return Verification(out, policy, verified, tuple(bad), stating, supported, repaired, used_fallback,
                        _cited_numbers(out, len(evidence)), (time.perf_counter() - t0) * 1000, off_topic)


# --------------------------------------------------------------------------------------------------
# Streams
# --------------------------------------------------------------------------------------------------


@dataclass
class SentenceGate:
    """Holds a stream's text until a sentence is complete, judges it, then releases it (or not).

    ``feed(delta)`` returns what may be sent now; ``close()`` returns the rest (and, under ``fallback``,
    the extractive answer when nothing survived). :attr:`result` is the :class:`Verification` of exactly
    what was released.
    """

    question: str
    evidence: Sequence[Any]
    verifier: Verifier
    policy: str
    repair: bool = True
    fallback: Callable[[], str] | None = None
    relevant: Callable[[Sequence[str]], bool] | None = None
    _on_topic: bool = False
    _buf: str = ""
    _released: list[str] = field(default_factory=list)
    _bad: list[Unsupported] = field(default_factory=list)
    _stating: int = 0
    _supported: int = 0
    _repaired: int = 0
    _ms: float = 0.0
    _fell_back: bool = False
    _said: set[str] = field(default_factory=set)
    _pending: str = ""
    result: Verification | None = None
    _OPEN: ClassVar[re.Pattern[str]] = re.compile(r"\[[\d,\s]{0,12}$")

    def feed(self, delta: str) -> str:
        self._buf += delta
        if self.policy == "off":
            out, self._buf = self._buf, ""
            self._released.append(out)
            return out
        if self._OPEN.search(self._buf):
            return ""  # a citation marker is still arriving: it belongs to the sentence before it
        segments = split_sentences(self._buf)
        if self._buf.endswith("\n"):
            done, self._buf = segments, ""
        else:  # the last segment may still grow; everything before it is complete
            done, self._buf = segments[:-1], segments[-1].raw if segments else ""
        return self._release(done)

    @property
    def stating(self) -> int:
        """Sentences judged so far that state something."""
        return self._stating

    @property
    def supported(self) -> int:
        return self._supported

    def _release(self, segments: Sequence[Segment]) -> str:
        if not segments:
            return ""
        t0 = time.perf_counter()
        judged = _judge_segments(segments, self.question, self.evidence, self.verifier, self.repair, self._said)
        if self.policy == "fallback" and self.relevant is not None:
            for j in judged:  # until one sentence addresses the question, a supported one beside it waits out
                if self._on_topic or not (j.stating and j.supported):
                    continue
                if self.relevant([_cited_text(j)]):
                    self._on_topic = True
                else:
                    j.supported, j.reason = False, "supported, but it does not address the question"
        self._stating += sum(j.stating for j in judged)
        self._supported += sum(j.stating and j.supported for j in judged)
        self._repaired += sum(j.repaired is not None and j.supported for j in judged)
        self._bad.extend(_unsupported(judged))
        # lead-ins and fragments ("Here is how:") wait for the claim they introduce: one that is never
        # released (dropped, or the fallback instead) takes them with it
        out = ""
        for j in judged:
            text = _rendered(j, self.policy)
            if text is None:
                continue
            if not j.stating and not _is_refusal(j.segment.text):
                self._pending += text
                continue
            out += self._pending + text
            self._pending = ""
        self._ms += (time.perf_counter() - t0) * 1000
        if not "".join(self._released).strip():
            out = out.lstrip()
        self._released.append(out)
        return out

    def close(self) -> str:
        tail = ""
        if self._buf:
            if self.policy == "off":
                tail, self._buf = self._buf, ""
                self._released.append(tail)
            else:
                buf, self._buf = self._buf, ""
                tail = self._release(split_sentences(buf))
        text = "".join(self._released)
        if self.policy != "off" and not _is_refusal(text) and not any(
                states_something(s.text, self.question) for s in split_sentences(text)):
            # nothing that states something survived: the fallback (or the refusal) instead
            alt = REFUSAL
            if self.policy == "fallback" and self.fallback is not None:
                self._fell_back = True
                v = verify_text(self.fallback(), question=self.question, evidence=self.evidence,
                                verifier=self.verifier, policy="drop", repair=self.repair)
                alt = v.text
            extra = alt if not text.strip() else "\n\n" + alt
            tail += extra
            self._released.append(extra)
            text += extra
        if self.policy != "off":
            tail = tail.rstrip() if tail.strip() else tail
        final = "".join(self._released).strip() if self.policy != "off" else text
        self.result = Verification(final, self.policy, self.policy != "off" and (self.policy != "flag" or not self._bad),
                                   tuple(self._bad), self._stating, self._supported, self._repaired, self._fell_back,
                                   _cited_numbers(final, len(self.evidence)), self._ms)
        return tail


def stream_through(gate: SentenceGate, deltas: Iterator[str]) -> Iterator[str]:
    for delta in deltas:
        out = gate.feed(delta)
        if out:
            yield out
    tail = gate.close()
    if tail:
        yield tail


# --------------------------------------------------------------------------------------------------
# The contract checks every verifier passes
# --------------------------------------------------------------------------------------------------


def contract_checks(verifier: Verifier, make_evidence: Callable[[int, str], Any]) -> None:
    """Assertions any verifier must satisfy (built-ins and plugins run them in their tests).

    ``make_evidence(n, text)`` builds one piece of evidence. Raises AssertionError naming the failed check.
    """
    e1 = make_evidence(1, "Run `acme-deploy rollback fleet` to redeploy the previous release in under two "
                          "minutes. Deploys happen Monday to Thursday.")
    e2 = make_evidence(2, "Opened items can be returned within 30 days for a refund.")
    q = "how do I roll back a bad deploy"
    claims = [
        Claim("Run acme-deploy rollback fleet to redeploy the previous release.", (e1,), (e1, e2), q),
        Claim("Run acme-deploy rollback fleet to redeploy the previous release.", (e2,), (e1, e2), q),
        Claim("Opened items can be returned within 30 days.", (e2,), (e1, e2), "return policy"),
        Claim("The moon is made of cheese and orbits Jupiter weekly.", (e1,), (e1, e2), q),
    ]
    out = verifier.judge(claims)
    assert isinstance(out, list) and len(out) == len(claims), "judge() returns one Judgement per claim"
    assert all(isinstance(j, Judgement) for j in out), "judge() returns Judgement objects"
    assert out[0].supported, "a sentence taken from its cited evidence is supported"
    assert not out[1].supported and out[1].reason, "a sentence citing the wrong evidence is not supported, with a reason"
    assert out[2].supported, "a second supported claim"
    assert not out[3].supported and out[3].reason, "an unrelated sentence is not supported, with a reason"
    assert verifier.judge([]) == [], "no claims, no judgements"
