"""The extractive answer: whole evidence sentences that answer the question, verbatim, with their ``[n]``.

It is the ``extractive`` backend's answer and the verified fallback of every other backend
(``answer.verify = "fallback"``). Sentences are scored by the question's content words they contain,
weighted by rarity across the shown evidence (a word in every sentence says little), plus half as much for
the words of the section heading above them, plus a small bonus for higher-ranked evidence. The best
sentence is taken; further sentences only when they cover question words the answer does not cover yet,
or continue the chosen sentence (the next step of a list) and score nearly as well; at most
``max_sentences``, listed in evidence order. Headings, table rows and fragments are never answers;
numbers and names stay exactly as written; paragraphs that speak to the assistant (planted instructions)
are skipped. When no sentence shares a content word with the question,
the answer is the refusal sentence.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from citeline.sentences import content_stems, content_words, split_sentences, stem, without_instructions

__all__ = ["REFUSAL", "extractive_answer", "select_sentences"]

REFUSAL = "I don't know from the available documents."  # the same sentence as citeline.prompting.REFUSAL
_HEADING = re.compile(r"^\s*#{1,6}\s+(.*)$")
_LIST_MARK = re.compile(r"^\s*(?:[-*•]\s+|\d{1,3}[.)]\s+)")
_NOT_ANSWER = re.compile(r"^\s*(?:\||---|```|<|\{|title:|access:)")


@dataclass(frozen=True)
class _Candidate:
    n: int
    pos: int
    text: str
    words: frozenset[str]
    heading: frozenset[str]
    score: float = 0.0


def _candidates(evidence: Sequence[Any]) -> list[_Candidate]:
    out: list[_Candidate] = []
    for e in evidence:
        heading: frozenset[str] = frozenset(content_stems(e.title))
        for pos, seg in enumerate(split_sentences(without_instructions(e.text))):
            line = seg.text
            h = _HEADING.match(line)
            if h:
                heading = frozenset(content_stems(h.group(1)))
                continue
            if _NOT_ANSWER.match(line):
                continue
            body = _LIST_MARK.sub("", line).strip()
            words = frozenset(content_stems(body))
            if len(words) < 3 or body.endswith(":") and len(words) < 6:
                continue  # fragments and lead-ins are not answers
            out.append(_Candidate(e.n, pos, body, words, heading))
    return out


def select_sentences(question: str, evidence: Sequence[Any], *, max_sentences: int = 3) -> list[tuple[int, str]]:
    """The chosen ``(n, sentence)`` pairs in evidence order (empty: nothing answers the question)."""
    wanted = content_stems(question)
    cands = _candidates(evidence)
    if not wanted or not cands:
        return []
    # "roll back" in the question is also "rollback" in a document: a sentence with the compound covers both
    words = content_words(question)
    compounds = {stem(a + b): (stem(a), stem(b)) for a, b in zip(words, words[1:], strict=False)}
    if compounds:
        cands = [_Candidate(c.n, c.pos, c.text, c.words | {w for k, pair in compounds.items() if k in c.words
                                                            for w in pair}, c.heading) for c in cands]
    df = {w: sum(1 for c in cands if w in c.words or w in c.heading) for w in wanted}
    weight = {w: math.log(1 + len(cands) / (1 + df[w])) + 0.1 for w in wanted}
    total = sum(weight.values())
    rank = {e.n: i for i, e in enumerate(evidence)}

    def coverage(words: frozenset[str] | set[str]) -> float:
        return sum(weight[w] for w in wanted if w in words) / total

    scored = [_Candidate(c.n, c.pos, c.text, c.words, c.heading,
                         coverage(c.words) + 0.5 * coverage(c.heading) + 0.1 / (1 + rank[c.n])) for c in cands]
    scored = [c for c in scored if c.words & wanted]
    if not scored:
        return []
    scored.sort(key=lambda c: (-c.score, rank[c.n], c.pos))
    best = scored[0]
    chosen = [best]
    covered = set(best.words & wanted)
    for c in scored[1:]:
        if len(chosen) >= max_sentences:
            break
        gain = coverage((c.words & wanted) - covered)
        follows = any(c.n == x.n and c.pos == x.pos + 1 for x in chosen)
        if (gain > 0.15 and c.score >= 0.5 * best.score) or (follows and c.score >= 0.8 * best.score):
            chosen.append(c)
            covered |= c.words & wanted
    chosen.sort(key=lambda c: (rank[c.n], c.pos))
    return [(c.n, c.text) for c in chosen]


def _cite(sentence: str, n: int) -> str:
    body = sentence.rstrip()
    m = re.search(r"[.!?]+[\"')]*$", body)
    if m:
        return f"{body[:m.start()]} [{n}]{body[m.start():]}"
    return f"{body} [{n}]."


def extractive_answer(question: str, evidence: Sequence[Any], *, max_sentences: int = 3) -> str:
    """The answer text: chosen sentences with their citations, or the refusal sentence."""
    picked = select_sentences(question, evidence, max_sentences=max_sentences)
    if not picked:
        return REFUSAL
    return " ".join(_cite(s, n) for n, s in picked)
