"""A third-party plugin for every extension point, registered as an outside package registers its own.

``tests/support/plugins`` holds the dist-info that registers these classes under citeline's entry-point
groups; a test puts that folder (and the repository) on ``sys.path`` and builds them through
:func:`citeline.plugins.create`, each from its own config section, exactly as citeline builds its
built-ins. They import only citeline's contracts, domain and errors, as a plugin package would, and each
passes its point's contract suite (``citeline.testing``).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Generator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, SecretStr

from citeline.contracts.generator import Generation, GenerationRequest
from citeline.contracts.verifier import Claim, Judgement
from citeline.domain import Chunk, ContentType, Document, SearchHit

__all__ = ["EchoGenerator", "HashingEmbedder", "OverlapVerifier", "ParagraphChunker", "PerDocumentReranker"]

_WORD = re.compile(r"\w+")
_TOKEN = re.compile(r"\w+|[^\w\s]")


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class HashingEmbedder:
    """``test-hashing``: words hashed into ``dimension`` signed buckets (a stand-in for a hosted API)."""

    class Config(_Config):
        api_key: SecretStr = Field(min_length=8, description="the (pretend) service's key")
        dimension: int = Field(64, ge=8, le=4096)

    def __init__(self, config: Config, *, home: Path | None = None) -> None:
        self.config = config
        self.home = home
        self.dimension = config.dimension
        self.name = f"test-hashing:{config.dimension}"

    def _vector(self, text: str) -> np.ndarray:
        v = np.zeros(self.dimension, dtype=np.float64)
        for word in _WORD.findall(text.lower()):
            digest = hashlib.sha256(word.encode()).digest()
            v[int.from_bytes(digest[:4], "big") % self.dimension] += 1.0 if digest[4] & 1 else -1.0
        norm = float(np.linalg.norm(v))
        if norm == 0:  # no words: a fixed unit vector, so every vector has unit length
            v[0], norm = 1.0, 1.0
        return (v / norm).astype(np.float32)

    def embed_documents(self, texts: Sequence[str]) -> np.ndarray:
        return np.array([self._vector(t) for t in texts], dtype=np.float32).reshape(len(texts), self.dimension)

    def embed_query(self, text: str) -> np.ndarray:
        return self._vector(text)

    def tokenize(self, text: str) -> list[str]:
        return _TOKEN.findall(text)


class ParagraphChunker:
    """``test-paragraphs``: blank-line paragraphs, long ones cut into windows of ``max_tokens`` words."""

    class Config(_Config):
        max_tokens: int = Field(40, ge=4)

    def __init__(self, config: Config, *, tokenize: Callable[[str], list[str]]) -> None:
        self.config = config
        self.tokenize = tokenize
        self.name = f"test-paragraphs:{config.max_tokens}"

    def chunk(self, document: Document) -> list[Chunk]:
        text = document.text
        if not text.strip():
            return []
        if document.content_type is ContentType.RECORD:
            start = len(text) - len(text.lstrip())
            return [Chunk(0, text.strip(), start, start + len(text.strip()))]
        spans: list[tuple[int, int]] = []
        for para in re.finditer(r"\S(?:.*?\S)?(?=\s*\n\s*\n|\s*$)", text, re.S):
            spans.extend(self._windows(text, para.start(), para.end()))
        return [Chunk(n, text[a:b], a, b) for n, (a, b) in enumerate(spans)]

    def _windows(self, text: str, start: int, end: int) -> list[tuple[int, int]]:
        words = list(re.finditer(r"\S+", text[start:end]))
        out, first, count = [], 0, 0
        for i, w in enumerate(words):
            count += len(self.tokenize(w.group()))
            if count > self.config.max_tokens and i > first:
                out.append((start + words[first].start(), start + words[i - 1].end()))
                first, count = i, len(self.tokenize(w.group()))
        out.append((start + words[first].start(), start + words[-1].end()))
        return out


class PerDocumentReranker:
    """``test-per-document``: retrieval's order, at most ``per_document`` hits of a document before the rest."""

    class Config(_Config):
        per_document: int = Field(1, ge=1)

    def __init__(self, config: Config, *, embedder: Any = None) -> None:
        self.config = config
        self.name = f"test-per-document:{config.per_document}"

    def rerank(self, query: str, hits: Sequence[SearchHit], k: int) -> list[SearchHit]:
        if k < 1:
            raise ValueError(f"k must be at least 1, not {k}")
        seen: dict[int, int] = {}
        first: list[SearchHit] = []
        later: list[SearchHit] = []
        for hit in hits:
            seen[hit.document_id] = seen.get(hit.document_id, 0) + 1
            (first if seen[hit.document_id] <= self.config.per_document else later).append(hit)
        return (first + later)[:k]


class OverlapVerifier:
    """``test-overlap``: supported when ``min_overlap`` of the sentence's longer words are in the cited evidence."""

    class Config(_Config):
        min_overlap: float = Field(0.8, gt=0.0, le=1.0)

    def __init__(self, config: Config, *, embedder: Any = None) -> None:
        self.config = config
        self.name = f"test-overlap:{config.min_overlap:g}"

    def judge(self, claims: Sequence[Claim]) -> list[Judgement]:
        return [self._judge(c) for c in claims]

    def _judge(self, claim: Claim) -> Judgement:
        words = {w for w in _WORD.findall(claim.sentence.lower()) if len(w) > 3}
        cited = set(_WORD.findall(" ".join(e.text for e in claim.cited).lower()))
        score = len(words & cited) / len(words) if words else 0.0
        if score >= self.config.min_overlap:
            return Judgement(True, score)
        return Judgement(False, score, f"only {score:.0%} of its words are in the cited evidence")


class EchoGenerator:
    """``test-echo``: answers with the first piece of evidence, cited, after ``prefix``."""

    name = "test-echo"
    serves_adapters = False

    class Config(_Config):
        prefix: str = "From the evidence:"

    def __init__(self, config: Config, *, home: Path | None = None, generation: Any = None) -> None:
        self.config = config

    @property
    def base_model(self) -> str:
        return "test-echo"

    def _answer(self, request: GenerationRequest) -> tuple[str, str]:
        text = (f"{self.config.prefix} {request.evidence[0].text} [{request.evidence[0].n}]" if request.evidence
                else "I don't know from the available documents.")
        cuts = [text.index(s) for s in request.stop if s and s in text]
        if cuts:
            return text[:min(cuts)], "stop"
        tokens = list(_TOKEN.finditer(text))
        if len(tokens) > request.max_tokens:
            return text[:tokens[request.max_tokens - 1].end()], "length"
        return text, "stop"

    def generate(self, request: GenerationRequest) -> Generation:
        text, finish = self._answer(request)
        prompt = sum(self.count_tokens(m.content) for m in request.messages)
        return Generation(text, self.base_model, prompt, self.count_tokens(text), finish)

    def stream(self, request: GenerationRequest) -> Generator[str, None, str]:
        text, finish = self._answer(request)
        for piece in re.split(r"(?<= )", text):
            if piece:
                yield piece
        return finish

    def count_tokens(self, text: str) -> int:
        return len(_TOKEN.findall(text))

    def models(self) -> list[str]:
        return [self.base_model]

    def close(self) -> None:
        pass
