"""The ``extractive`` backend: no model; the answer is the evidence sentences that best support it.

Each evidence sentence is scored by the share of the question's content words it contains (plus a small
bonus for higher-ranked evidence); the best sentences (at most three, from at most two pieces of
evidence) are returned verbatim with their ``[n]`` citation. Deterministic, instant, and useful for load
tests (it measures everything but generation) and for deployments that must not paraphrase.

With no evidence sentence sharing a content word with the question, the answer is the refusal sentence.
Tokens are counted as words and punctuation (there is no model tokenizer).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from citeline.prompting import REFUSAL
from citeline.serving.generation import Evidence, Generation, GenerationRequest
from citeline.settings import GenerationSettings

__all__ = ["ExtractiveBackend"]

_WORD = re.compile(r"[A-Za-z0-9]+(?:['’][A-Za-z]+)?")
_TOKEN = re.compile(r"\w+|[^\w\s]")
_SENTENCE = re.compile(r"(?<=[.!?])\s+|\n{1,}")
_STOP = frozenset("""a an and are as at be by can do does for from has have how i if in is it its me my of on or our
should so that the their them then there these they this to us was we what when where which who why will with
you your""".split())


def _content_words(text: str) -> set[str]:
    return {w.lower() for w in _WORD.findall(text) if w.lower() not in _STOP and len(w) > 1}


class ExtractiveBackend:
    name = "extractive"

    def __init__(self, settings: GenerationSettings | None = None, home: Path | None = None) -> None:
        self.settings = settings or GenerationSettings(backend="extractive")

    @property
    def base_model(self) -> str:
        return "extractive"

    def _select(self, question: str, evidence: tuple[Evidence, ...]) -> list[tuple[int, str]]:
        wanted = _content_words(question)
        scored: list[tuple[float, int, int, str]] = []
        for rank, e in enumerate(evidence):
            for pos, sentence in enumerate(s.strip() for s in _SENTENCE.split(e.text)):
                words = _content_words(sentence)
                if not wanted or len(words) < 3 or sentence.startswith(("#", "|", "---")):
                    continue  # headings, table rows and fragments are not answers
                overlap = len(words & wanted) / len(wanted)
                if overlap > 0:
                    scored.append((overlap + 0.05 / (1 + rank), e.n, pos, sentence))
        scored.sort(key=lambda t: (-t[0], t[1], t[2]))
        chosen: list[tuple[int, int, str]] = []
        sources: set[int] = set()
        for _, n, pos, sentence in scored:
            if len(chosen) == 3 or (n not in sources and len(sources) == 2):
                continue
            chosen.append((n, pos, sentence))
            sources.add(n)
        chosen.sort()
        return [(n, s) for n, _, s in chosen]

    def _answer(self, request: GenerationRequest) -> str:
        picked = self._select(request.question, request.evidence)
        if not picked:
            return REFUSAL
        return " ".join(f"{s.rstrip()} [{n}]" for n, s in picked)

    def generate(self, request: GenerationRequest) -> Generation:
        text = self._answer(request)
        prompt = sum(self.count_tokens(m.content) for m in request.messages)
        return Generation(text, self.base_model, prompt, self.count_tokens(text))

    def stream(self, request: GenerationRequest) -> Iterator[str]:
        for piece in re.split(r"(?<= )", self._answer(request)):
            if piece:
                yield piece

    def count_tokens(self, text: str) -> int:
        return len(_TOKEN.findall(text))

    def models(self) -> list[str]:
        return [self.base_model]

    def close(self) -> None:
        pass
