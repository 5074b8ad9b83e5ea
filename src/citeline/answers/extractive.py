"""The extractive answer: whole evidence sentences that answer the question, verbatim, with their ``[n]``.

It is the ``extractive`` backend's answer and the verified fallback of every other backend
(``answer.verify = "fallback"``). Sentences are scored by the question's content words they contain,
weighted by rarity across the shown evidence (a word in every sentence says little), plus half as much for
the words of the section heading above them, plus a small bonus for higher-ranked evidence. The best
sentence is taken; further sentences only when they cover question words the answer does not cover yet,
or continue the chosen sentence (the next step of a list) and score nearly as well; a record (a catalog
row of ``Field: value`` lines) is one candidate, all its fields in one sentence; at most
``max_sentences``, listed in evidence order. Headings, table rows and fragments are never answers;
numbers and names stay exactly as written; paragraphs that speak to the assistant (planted instructions)
are skipped. When no sentence shares a content word with the question,
the answer is the refusal sentence.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from citeline.answers.sentences import (
    asked_part,
    content_stems,
    content_words,
    split_sentences,
    stem,
    strip_citations,
    without_instructions,
)

__all__ = ["REFUSAL", "answers_question", "extractive_answer", "score_candidates", "select_sentences"]

REFUSAL = "I don't know from the available documents."  # the same sentence as citeline.answers.prompt.REFUSAL
_HEADING = re.compile(r"^\s*#{1,6}\s+(.*)$")
_LIST_MARK = re.compile(r"^\s*(?:[-*•]\s+|\d{1,3}[.)]\s+)")
_FIELD = re.compile(r"^[A-Z][\w ./-]{0,40}:\s+\S")
_GENERIC = content_stems("""need use using used please first then next also step steps way make sure able get
following follow here answer question""")
_NOT_ANSWER = re.compile(r"^\s*(?:\||---|```|<|\{|title:|access:)")


@dataclass(frozen=True)
class _Candidate:
    n: int
    pos: int
    text: str
    doc: int
    chunk: int
    words: frozenset[str]
    heading: frozenset[str]
    step: bool = False  # a list item
    lede: bool = False  # the first sentence under a page's title
    score: float = 0.0
    lexical: float = 0.0
    sim: float = 0.0
    novelty: float = 1.0


def _doc(e: Any) -> int:
    return int(getattr(e, "document_id", -e.n))


def _record(text: str) -> str | None:
    """A record (a catalog row: ``Field: value`` lines) as one sentence, or None for prose."""
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    fields = [ln for ln in lines if _FIELD.match(ln)]
    if len(fields) < 2 or len(fields) * 2 < len(lines):
        return None
    return "; ".join(f.rstrip(" .;") for f in fields) + "."


def _candidates(evidence: Sequence[Any]) -> list[_Candidate]:
    out: list[_Candidate] = []
    for e in evidence:
        heading: frozenset[str] = frozenset(content_stems(e.title))
        record = _record(without_instructions(e.text))
        if record is not None:  # a record answers as a whole: its price is no sentence of its own
            out.append(_Candidate(e.n, 0, record, _doc(e), int(getattr(e, "chunk_id", e.n)),
                                  frozenset(content_stems(record)), heading))
            continue
        under_title = False
        first = True
        for pos, seg in enumerate(split_sentences(without_instructions(e.text))):
            line = seg.text
            h = _HEADING.match(line)
            if h:  # the section's heading, with the page title (a ticket's comment sits under its subject)
                heading = frozenset(content_stems(h.group(1)) | content_stems(e.title))
                under_title = line.lstrip().startswith("# ")
                first = True
                continue
            if _NOT_ANSWER.match(line):
                continue
            body = " ".join(_LIST_MARK.sub("", line).split())  # a wrapped line reads as one sentence
            words = frozenset(content_stems(body))
            if len(words) < 3 or (body.endswith(":") and len(words) < 6):
                continue  # fragments and lead-ins are not answers
            out.append(_Candidate(e.n, pos, body, _doc(e), int(getattr(e, "chunk_id", e.n)), words, heading,
                                  step=_LIST_MARK.match(line) is not None,
                                  lede=under_title and first))
            first = False
    return out


Similarity = Callable[[str, Sequence[str]], Sequence[float]]
_EXPECTS_NUMBER = re.compile(r"^\s*(?:how\s+(?:much|many|long|often|soon|far|old|big|heavy|fast)|when\b|what\s+time|"
                             r"which\s+(?:version|number|day|date|year)|what\s+(?:is\s+the\s+)?(?:number|price|"
                             r"cost|share|percentage|version|date))|\b(?:how\s+much|how\s+many|how\s+long|price|"
                             r"cost|number|version)\b", re.IGNORECASE)


_WANTS_MONEY = re.compile(r"\bhow\s+much\s+(?:does|do|is|are|was|will|would)\b|\b(?:cost|costs|price|priced|"
                          r"pay|fee|charge[sd]?)\b", re.IGNORECASE)
_MONEY = re.compile(r"[£$€]\s?\d|\b\d[\d,.]*\s?(?:GBP|USD|EUR|pounds|dollars|euros)\b")
_POINTER = re.compile(r"\bsee\s+(?:the\s+)?[\w\s-]{0,40}\b(?:page|section|doc|document|guide|runbook|wiki)\b|"
                      r"\brefer\s+to\b", re.IGNORECASE)
_PROCEDURAL = re.compile(r"\bhow\s+(?:do|can|should|would|to|does)\b(?!\s+(?:it|they|you)\s+(?:cost|take|last))|"
                         r"\bhow\s+do\s+we\s+fix\b|\bwhat\s+(?:command|steps)\b", re.IGNORECASE)
_IMPERATIVE = frozenset("""run type open hold press choose select click go use call email contact send post check
restart switch install add set update write book ask log sign enter reset unplug plug
turn wait confirm declare follow create make remove delete pull push drop keep put take
tell raise file submit replace""".split())


def _has_number(text: str, question: str) -> bool:
    from citeline.answers.sentences import numbers

    return bool(numbers(text) - numbers(question))


_FRAME = re.compile(r"\bhow\s+(?:long|many|much|often|soon|far|old)\b|\bwhat\s+(?:kind|sort|type)\s+of\b",
                    re.IGNORECASE)


def _asked(question: str) -> set[str]:
    """What the question asks: the content stems of its interrogative sentences (context before them, "I'm
    based in the UK.", is not asked), without its frame ("how long", "how many": the answer's type)."""
    whole = content_stems(_FRAME.sub(" ", question)) - _GENERIC
    part = asked_part(question)
    if part is None:
        return whole
    asked = content_stems(_FRAME.sub(" ", part)) - _GENERIC
    return asked if len(asked) >= 3 else whole  # "How do we fix it?": the context says what "it" is


_PART_SPLIT = re.compile(r"\?+\s*|[,;]?\s+(?:and|also|plus)\s+(?=(?:how|where|what|when|which|who|why|whether|is|are|"
                         r"can|could|do|does|will|would|should)\b)", re.IGNORECASE)


def _parts(question: str) -> list[str]:
    """The separate things a question asks ("What's the part number and price?" is one; "Which network
    should they use and where can they find the password?" is two)."""
    parts = [p.strip() for p in _PART_SPLIT.split(question) if p and p.strip()]
    return parts if len(parts) > 1 else []


def _novelty(c: _Candidate, wanted: set[str], question: str) -> float:
    """The share of what a sentence says that the question does not already say (numbers count)."""
    from citeline.answers.sentences import numbers

    own = c.words - _GENERIC
    new = len(own - wanted) + len(numbers(c.text) - numbers(question))
    return new / max(1, len(own) + len(numbers(c.text) - numbers(question)))


def _compounds(question: str) -> Callable[[frozenset[str]], frozenset[str]]:
    """"roll back" in the question is also "rollback" in a document: a text with the compound covers both."""
    words = content_words(question)
    pairs = {stem(a + b): (stem(a), stem(b)) for a, b in zip(words, words[1:], strict=False)}
    return lambda stems: stems | {w for k, pair in pairs.items() if k in stems for w in pair}


_Coverage = Callable[[set[str] | frozenset[str]], float]  # a question-word coverage function


def _weigher(wanted: set[str], cands: Sequence[_Candidate]) -> Callable[[set[str] | frozenset[str]], float]:
    """Coverage of the question's words, each weighted by its rarity among the evidence's sentences (a word
    in no evidence weighs most)."""
    df = {w: sum(1 for c in cands if w in c.words or w in c.heading) for w in wanted}
    weight = {w: math.log(1 + len(cands) / (1 + df[w])) + 0.1 for w in wanted}
    total = sum(weight.values()) or 1.0
    return lambda words: sum(weight[w] for w in wanted if w in words) / total


def answers_question(question: str, sentences: Sequence[str], evidence: Sequence[Any], *,
                     similarity: Similarity | None = None, min_coverage: float = 0.35, min_similarity: float = 0.7,
                     focus: str | None = None, cited_titles: Sequence[str] = ()) -> bool:
    """Whether ``sentences`` (a verified answer) address what the question asks, by the same measure the
    extractive answer is held to: coverage of the asked words (with the cited documents' titles), or one
    sentence close enough to the question."""
    wanted = _asked(question)
    if not wanted or not sentences:
        return bool(sentences)
    expand = _compounds(question)
    cands = [replace(c, words=expand(c.words)) for c in _candidates(evidence)]
    coverage = _weigher(wanted, cands)
    have = expand(frozenset(set().union(*(content_stems(t) for t in (*sentences, *cited_titles)))))
    answered = coverage(have & wanted)
    if focus and _asked(focus):
        own = _asked(focus)
        answered = max(answered, len(own & have) / len(own))
    if answered >= min_coverage:
        return True
    if similarity is None:
        return False
    return max(similarity(question, [strip_citations(t) for t in sentences])) >= min_similarity


def score_candidates(question: str, evidence: Sequence[Any], *, similarity: Similarity | None = None,
                     asked: list[_Candidate] | None = None) -> tuple[list[_Candidate], _Coverage]:
    """Every candidate sentence with its score, best first, and the question-coverage function.

    ``asked`` (when given) receives the sentences set aside as restatements of the question.
    """
    asked = asked if asked is not None else []
    wanted = _asked(question)
    cands = _candidates(evidence)
    if not wanted or not cands:
        return [], lambda words: 0.0
    expand = _compounds(question)
    cands = [replace(c, words=expand(c.words)) for c in cands]
    coverage = _weigher(wanted, cands)
    rank = {e.n: i for i, e in enumerate(evidence)}

    sims = list(similarity(question, [c.text for c in cands])) if similarity is not None else [0.0] * len(cands)
    wants_number = _EXPECTS_NUMBER.search(question) is not None
    wants_money = _WANTS_MONEY.search(question) is not None
    procedural = _PROCEDURAL.search(question) is not None
    scored = []
    for c, sim in zip(cands, sims, strict=True):
        if c.text.rstrip(" *_\"')").endswith("?"):
            continue  # a question is not an answer
        lexical = coverage(c.words) + 0.5 * coverage(c.heading - c.words)
        score = lexical + 1.5 * sim + 0.1 / (1 + rank[c.n])
        if wants_money:
            if _MONEY.search(c.text):
                score += 0.35  # "how much does it cost": an answer states a price
        elif wants_number and _has_number(c.text, question):
            score += 0.25  # "how long", "which version": an answer states a number
        if procedural and ("`" in c.text or c.text.split()[0].lower().strip("*_") in _IMPERATIVE):
            score += 0.25  # "how do I": an answer is a command or an instruction
        if c.lede:
            score *= 0.75  # a page's opening line says what the page covers, not the answer
        if _POINTER.search(c.text):
            score *= 0.85  # "(see the Deploy process page)": the answer is elsewhere
        novelty = _novelty(c, wanted, question)
        if wants_number and _has_number(c.text, question):
            novelty = 1.0  # the number is the news
        score *= min(1.0, 0.3 + 1.4 * novelty)  # restating the question tells nothing new
        scored.append(replace(c, score=score, lexical=lexical, sim=float(sim), novelty=novelty))
    # A sentence that only restates the question (a ticket's own description of the problem) is not the
    # answer; what the same document says after it (the reply) is likely to be.
    echoes = [c for c in scored if c.novelty < 0.4 and c.lexical >= 0.5]
    asked.extend(echoes)
    if echoes and len(echoes) < len(scored):
        asked_in = {(c.doc, c.n, c.pos) for c in echoes}
        scored = [c for c in scored if (c.doc, c.n, c.pos) not in asked_in]
        first_ask: dict[int, tuple[int, int]] = {}
        for c in echoes:
            first_ask[c.doc] = min(first_ask.get(c.doc, (c.chunk, c.pos)), (c.chunk, c.pos))
        scored = [replace(c, score=c.score + 0.3) if c.doc in first_ask and (c.chunk, c.pos) > first_ask[c.doc]
                  else c for c in scored]
    scored.sort(key=lambda c: (-c.score, rank[c.n], c.pos))
    return scored, coverage


def select_sentences(question: str, evidence: Sequence[Any], *, max_sentences: int = 3,
                     similarity: Similarity | None = None, min_coverage: float = 0.0,
                     min_similarity: float = 2.0, focus: str | None = None) -> list[tuple[int, str]]:
    """The chosen ``(n, sentence)`` pairs in evidence order (empty: the evidence does not answer).

    Answerability: the chosen sentences (with their headings) must cover at least ``min_coverage`` of the
    question's content words weighted by rarity (a word absent from the evidence weighs most), or the best
    sentence must be at least ``min_similarity`` similar to the question. ``focus`` (the user's own words
    when the question was rewritten from a conversation) counts as well: the better of the two coverages.
    """
    echoes: list[_Candidate] = []
    scored, coverage = score_candidates(question, evidence, similarity=similarity, asked=echoes)
    wanted = _asked(question)
    scored = [c for c in scored if (c.words | c.heading) & wanted or c.sim >= 0.5]
    if not scored:
        return []
    best = scored[0]
    chosen = [best]
    covered = set(best.words | best.heading) & wanted
    if best.novelty < 0.5:  # a lead-in ("Anyone can declare an incident."): the next sentence says how
        after = [c for c in scored if c.n == best.n and c.pos == best.pos + 1]
        if after:
            chosen.append(after[0])
            covered |= (after[0].words | after[0].heading) & wanted
    for c in scored[1:]:
        if len(chosen) >= max_sentences:
            break
        if c in chosen:
            continue
        gain = coverage(((c.words | c.heading) & wanted) - covered)
        follows = any(c.n == x.n and c.pos == x.pos + 1 for x in chosen)
        if (gain > 0.15 and c.score >= 0.6 * best.score) or (follows and c.score >= 0.8 * best.score):
            chosen.append(c)
            covered |= (c.words | c.heading) & wanted
    for part in _parts(question):  # "Which network, and where is the password?": each part gets its sentence
        own = _asked(part)
        have = set().union(*(c.words | c.heading for c in chosen))
        if len(chosen) >= max_sentences or len(own) < 2 or len(own & have) * 2 >= len(own):
            continue
        part_scored, _ = score_candidates(part, evidence, similarity=similarity)
        extra = next((c for c in part_scored if c.words & own and all((c.n, c.pos) != (x.n, x.pos) for x in chosen)),
                     None)
        if extra is not None and extra.score >= 0.5 * best.score:
            chosen.append(extra)
            covered |= (extra.words | extra.heading) & wanted
    for echo in echoes:  # a reply answers what its document asked: the restatement's words count as covered
        if any(c.doc == echo.doc for c in chosen):
            covered |= (echo.words | echo.heading) & wanted
    answered = coverage(covered)
    if focus:
        own = _asked(focus)
        if own:
            answered = max(answered, len(own & covered | own & set().union(*(c.words | c.heading for c in chosen)))
                           / len(own))
    if answered < min_coverage and max(c.sim for c in chosen) < min_similarity:
        return []
    rank = {e.n: i for i, e in enumerate(evidence)}
    chosen.sort(key=lambda c: (rank[c.n], c.pos))
    return [(c.n, c.text) for c in chosen]


def _cite(sentence: str, n: int) -> str:
    body = sentence.rstrip()
    m = re.search(r"[.!?]+[\"')]*$", body)
    if m:
        return f"{body[:m.start()]} [{n}]{body[m.start():]}"
    return f"{body} [{n}]."


def extractive_answer(question: str, evidence: Sequence[Any], *, max_sentences: int = 3,
                      similarity: Similarity | None = None, min_coverage: float = 0.0, min_similarity: float = 2.0,
                      focus: str | None = None) -> str:
    """The answer text: chosen sentences with their citations, or the refusal sentence."""
    picked = select_sentences(question, evidence, max_sentences=max_sentences, similarity=similarity,
                              min_coverage=min_coverage, min_similarity=min_similarity, focus=focus)
    if not picked:
        return REFUSAL
    return " ".join(_cite(s, n) for n, s in picked)
