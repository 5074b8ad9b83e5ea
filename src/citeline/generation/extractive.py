"""The ``extractive`` backend: no model; the answer is the evidence sentences that best answer the question.

The selection is :func:`citeline.answers.extractive.extractive_answer` (whole sentences, verbatim, with their
``[n]``; at most the sentences needed, in evidence order), the same text every other backend falls back
to when verification rejects its answer. Deterministic, instant, and useful for load tests (it measures
everything but generation) and for deployments that must not paraphrase.

With no evidence sentence sharing a content word with the question, the answer is the refusal sentence.
Tokens are counted as words and punctuation (there is no model tokenizer). ``max_tokens`` and ``stop``
cut the answer like a model's would (``finish_reason`` "length" or "stop").

There are no adapters: a team with an active adapter is answered by this backend's base (``extractive``),
the answer's ``model_note`` says so, and the audit rows (streamed or not) record ``extractive``.
"""

from __future__ import annotations

import re
from collections.abc import Generator
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from citeline.answers.extractive import Similarity, extractive_answer
from citeline.contracts.generator import Generation, GenerationRequest
from citeline.settings import GenerationSettings

__all__ = ["ExtractiveBackend"]

_TOKEN = re.compile(r"\w+|[^\w\s]")


class ExtractiveBackend:
    name = "extractive"

    extractive = True  # the Assistant configures it with the same rules as its verified fallback
    serves_adapters = False  # a team's active adapter is ignored: the Assistant answers with the base, noting it

    class Config(BaseModel):
        """``[generation.options]`` of ``backend = "extractive"``: none (its thresholds are ``[answer]``'s)."""

        model_config = ConfigDict(extra="forbid", frozen=True)

    def __init__(self, config: Config | None = None, *, home: Path | None = None,
                 generation: GenerationSettings | None = None) -> None:
        """Nothing to configure; ``home`` and ``generation`` are the generators' context, unused here."""
        self.config = config or self.Config()
        self._options: dict[str, Any] = {}

    def configure(self, *, similarity: Similarity | None, min_coverage: float, min_similarity: float) -> None:
        """Sentence similarity and answerability thresholds (:func:`citeline.answers.extractive.extractive_answer`)."""
        self._options = {"similarity": similarity, "min_coverage": min_coverage, "min_similarity": min_similarity}

    @property
    def base_model(self) -> str:
        return "extractive"

    def _answer(self, request: GenerationRequest) -> tuple[str, str]:
        focus = request.user_question if request.user_question not in ("", request.question) else None
        text = extractive_answer(request.question, request.evidence, focus=focus, **self._options)
        finish = "stop"
        for s in request.stop:
            if s and s in text:
                text = text[: text.index(s)]
        tokens = list(_TOKEN.finditer(text))
        if len(tokens) > request.max_tokens:
            text, finish = text[: tokens[request.max_tokens - 1].end()], "length"
        return text, finish

    def generate(self, request: GenerationRequest) -> Generation:
        text, finish = self._answer(request)
        prompt = sum(self.count_tokens(m.content) for m in request.messages)
        return Generation(text, self.base_model, prompt, self.count_tokens(text), finish)

    def stream(self, request: GenerationRequest) -> Generator[str, None, str]:
        """The answer in word-sized deltas; returns the finish reason."""
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
