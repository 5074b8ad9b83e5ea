"""The ``extractive`` backend: no model; the answer is the evidence sentences that best answer the question.

The selection is :func:`citeline.extractive.extractive_answer` (whole sentences, verbatim, with their
``[n]``; at most the sentences needed, in evidence order), the same text every other backend falls back
to when verification rejects its answer. Deterministic, instant, and useful for load tests (it measures
everything but generation) and for deployments that must not paraphrase.

With no evidence sentence sharing a content word with the question, the answer is the refusal sentence.
Tokens are counted as words and punctuation (there is no model tokenizer). ``max_tokens`` and ``stop``
cut the answer like a model's would (``finish_reason`` "length" or "stop").
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from citeline.extractive import extractive_answer
from citeline.serving.generation import Generation, GenerationRequest
from citeline.settings import GenerationSettings

__all__ = ["ExtractiveBackend"]

_TOKEN = re.compile(r"\w+|[^\w\s]")


class ExtractiveBackend:
    name = "extractive"

    def __init__(self, settings: GenerationSettings | None = None, home: Path | None = None) -> None:
        self.settings = settings or GenerationSettings(backend="extractive")
        self.last_finish_reason = "stop"

    @property
    def base_model(self) -> str:
        return "extractive"

    def _answer(self, request: GenerationRequest) -> tuple[str, str]:
        text = extractive_answer(request.question, request.evidence)
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

    def stream(self, request: GenerationRequest) -> Iterator[str]:
        text, self.last_finish_reason = self._answer(request)
        for piece in re.split(r"(?<= )", text):
            if piece:
                yield piece

    def count_tokens(self, text: str) -> int:
        return len(_TOKEN.findall(text))

    def models(self) -> list[str]:
        return [self.base_model]

    def close(self) -> None:
        pass
