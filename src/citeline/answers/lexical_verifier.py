"""The built-in verifier (entry point ``lexical`` of ``citeline.verifiers``): word coverage, then meaning.

A claim is supported when the content words it adds beyond the question are covered by a window of adjacent
sentences of the evidence it cites (``min_coverage``), with its negations and numbers matching; a claim the
words leave in doubt is decided by sentence-embedding similarity (:class:`SentenceVectors`, when an embedder
is given). The rules applied around any verifier are in :mod:`citeline.answers.verification`.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from citeline.answers.sentences import (
    content_stems,
    content_words,
    entities,
    negated,
    numbers,
    split_sentences,
    without_instructions,
)
from citeline.answers.verification import GENERIC_WORDS, contains, usable_text
from citeline.contracts.verifier import Claim, Judgement

__all__ = ["LexicalVerifier", "SentenceVectors"]


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
        if band and self.vectors is not None:  # (an embedder is set)
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
        cited_text = usable_text(claim.cited)
        cited_lower = cited_text.lower()
        nums = numbers(cited_text)
        missing_nums = sorted(n for n in numbers(claim.sentence) if n not in nums)
        if missing_nums:
            return Judgement(False, 0.0, f"number {missing_nums[0]} is not in the cited evidence"), 0.0
        question = claim.question.lower()
        for name in sorted(entities(claim.sentence)):
            if not contains(cited_lower, name) and not contains(question, name):
                return Judgement(False, 0.0, f"{name!r} is not in the cited evidence"), 0.0
        new = content_stems(claim.sentence) - content_stems(claim.question) - GENERIC_WORDS
        if not new:  # the sentence restates the question: the cited evidence must be about it
            new = content_stems(claim.sentence) - GENERIC_WORDS
        # support is local: the words must stand together in a few adjacent sentences of the evidence, not
        # be scattered over a whole chunk ("The Fleet app is only available for a month")
        windows = _windows(claim.cited, self.config.window)
        have = max(windows, key=lambda w: len(new & w)) if windows else set()
        coverage = len(new & have) / len(new) if new else 1.0
        # words taken from the question are not free: a sentence that restates the question with one new
        # word ("We only offer a trade-in discount for the Scout S2") must find the question's words there too
        every = content_stems(claim.sentence) - GENERIC_WORDS
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
        new = content_stems(claim.sentence) - content_stems(claim.question) - GENERIC_WORDS
        j = self._not_covered(new, content_stems(usable_text(claim.cited)), coverage)
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
