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
    not, a score and, when not, a reason a person can read. The checks every verifier passes are
    :mod:`citeline.testing.verifiers` (built-ins and plugins run the same ones).

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
    answer from the same evidence (:func:`citeline.answers.extractive.extractive_answer`), itself verified.
    ``drop``: unsupported sentences are removed (nothing left → the refusal sentence). ``flag``: everything
    is kept and each unsupported sentence is marked ``[unverified]``. ``off``: no verification.

Streams (:class:`citeline.answers.sentence_gate.SentenceGate`) judge each sentence when it is complete and
release it only then, so a client never receives a sentence the final answer drops; under ``fallback`` no
sentence is released until one that addresses the question is (a supported sentence beside the question
before it is dropped). Under ``fallback`` a stream whose sentences were all dropped sends the extractive
answer; sentences already released are never taken back, so a stream falls back only when nothing survived.

The built-in verifier is :class:`citeline.answers.lexical_verifier.LexicalVerifier`.
"""
from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from citeline.answers.sentences import (
    CITATION,
    Segment,
    content_stems,
    content_words,
    entities,
    numbers,
    split_sentences,
    strip_citations,
    without_instructions,
)
from citeline.contracts.verifier import Claim, EvidenceLike, Judgement, Verifier  # noqa: F401  (re-exported)

_LIST_MARK = re.compile(r"^\s*(?:[-*•]\s+|\d{1,3}[.)]\s+)")

__all__ = ["FLAG", "REFUSAL", "Claim", "Judgement", "Policy", "Unsupported", "Verification", "Verifier",
           "states_something", "verify_text"]

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


# words that state nothing by themselves: a sentence needs more than these (and the question's) to be a claim
GENERIC_WORDS = content_stems("""need use using used please first then next also step steps way make sure able get
following follow here answer question evidence document documents according available information provided
say says said mention mentioned note yes okay ok sure""")


def usable_text(evidence: Sequence[Any]) -> str:
    """The evidence's title and text, without paragraphs that speak to the assistant (never support)."""
    return "\n".join(f"{e.title}\n{without_instructions(e.text)}" for e in evidence)


def contains(haystack: str, needle: str) -> bool:
    return re.search(r"(?<![\w])" + re.escape(needle) + r"(?![\w])", haystack) is not None


# --------------------------------------------------------------------------------------------------
# Applying a verifier to an answer
# --------------------------------------------------------------------------------------------------


def cited_numbers(raw: str, n_evidence: int) -> tuple[int, ...]:
    out: list[int] = []
    for m in CITATION.finditer(raw):
        for part in m.group(1).split(","):
            n = int(part)
            if 1 <= n <= n_evidence and n not in out:
                out.append(n)
    return tuple(out)


def is_refusal(text: str) -> bool:
    return strip_citations(text).strip().rstrip(".").lower() == REFUSAL.rstrip(".").lower()


def states_something(sentence: str, question: str) -> bool:
    """Whether a sentence makes a claim that needs evidence (not a heading, a lead-in or the refusal)."""
    bare = strip_citations(sentence).strip()
    if not bare or is_refusal(bare) or re.fullmatch(r"#{1,6}\s.*|[-*_=|:\s]+", bare):
        return False
    if numbers(bare) or entities(bare):
        return True
    words = content_stems(bare) - GENERIC_WORDS
    if bare.endswith(":") and len(words) <= 4:
        return False  # "Here is how to roll back:" introduces what follows
    return len(words - content_stems(question)) > 0 or len(words) >= 3


@dataclass
class Judged:
    segment: Segment
    stating: bool
    cited: tuple[int, ...]
    supported: bool = True
    reason: str = ""
    repaired: int | None = None


def judge_segments(segments: Sequence[Segment], question: str, evidence: Sequence[Any], verifier: Verifier,
                    repair: bool, said: set[str] | None = None) -> list[Judged]:
    by_n = {e.n: e for e in evidence}
    usable = usable_text(evidence)
    all_nums = numbers(usable)
    all_lower = usable.lower()
    judged = [Judged(s, states_something(s.text, question), cited_numbers(s.raw, len(evidence))) for s in segments]
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
            sorted(x for x in entities(bare) if not contains(all_lower, x) and not contains(question.lower(), x))
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


def cited_text(j: Judged) -> str:
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


def rendered(j: Judged, policy: str) -> str | None:
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


def unsupported_of(judged: Sequence[Judged]) -> list[Unsupported]:
    return [Unsupported(strip_citations(j.segment.text).strip(), j.reason, j.cited)
            for j in judged if j.stating and not j.supported]


def _render(judged: Sequence[Judged], policy: str) -> tuple[str, list[Unsupported]]:
    return "".join(t for j in judged if (t := rendered(j, policy)) is not None), unsupported_of(judged)


def _tidy(text: str) -> str:
    text = re.sub(r"[ \t]+\n", "\n", text)
    text = re.sub(r"\n{3,}", "\n\n", text)
    return text.strip()


def _has_claims(judged: Sequence[Judged]) -> bool:
    return any(j.stating and j.supported for j in judged)


def verify_text(text: str, *, question: str, evidence: Sequence[Any], verifier: Verifier, policy: str,
                min_supported: float = 0.5, repair: bool = True, fallback: Callable[[], str] | None = None,
                relevant: Callable[[Sequence[str]], bool] | None = None) -> Verification:
    """Judge every sentence of ``text`` and apply ``policy`` (see the module docstring).

    ``relevant`` (under ``fallback``): whether the surviving sentences (with their ``[n]``) address the
    question at all; an answer that is supported but beside the question is replaced by the fallback too.
    """
    t0 = time.perf_counter()
    if policy == "off" or is_refusal(text):
        cited = cited_numbers(text, len(evidence))
        return Verification(text, policy, verified=policy != "off" and is_refusal(text), cited=cited,
                            ms=(time.perf_counter() - t0) * 1000)
    judged = judge_segments(split_sentences(text), question, evidence, verifier, repair)
    stating = sum(j.stating for j in judged)
    supported = sum(j.stating and j.supported for j in judged)
    repaired = sum(j.repaired is not None and j.supported for j in judged)
    out, bad = _render(judged, policy)
    out = _tidy(out)
    used_fallback = False
    off_topic = False
    if policy == "fallback" and _has_claims(judged) and supported >= min_supported * stating and relevant is not None:
        kept = [cited_text(j) for j in judged if j.stating and j.supported]
        off_topic = not relevant(kept)
    if policy == "fallback" and (off_topic or not _has_claims(judged) or supported < min_supported * stating):
        used_fallback = True
        alt = fallback() if fallback is not None else REFUSAL
        alt_judged = judge_segments(split_sentences(alt), question, evidence, verifier, repair) \
            if not is_refusal(alt) else []
        out = _tidy(_render(alt_judged, "drop")[0]) if alt_judged else REFUSAL
        if alt_judged and not _has_claims(alt_judged):
            out = REFUSAL
    elif policy == "drop" and not _has_claims(judged):
        out = REFUSAL
    if not out:
        out = REFUSAL
    verified = policy != "flag" or not bad
    return Verification(out, policy, verified, tuple(bad), stating, supported, repaired, used_fallback,
                        cited_numbers(out, len(evidence)), (time.perf_counter() - t0) * 1000, off_topic)
