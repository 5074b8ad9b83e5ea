"""The generation-backend contract: one interface for vLLM (``openai``), ``embedded`` and ``extractive``.

A backend turns a chat request into text. The grounded prompt (system rules, numbered evidence, the
question) is built by :mod:`citeline.answers.prompt`; a backend only generates. Backends are found through the
entry-point group ``citeline.generators`` (the built-ins are registered in citeline's own ``pyproject.toml``
the same way); each entry point names a class built by :func:`citeline.plugins.create` as
``cls(config, home=home, generation=generation)``: ``config`` is the class's own pydantic ``Config``
validated from ``[generation.options]``, ``generation`` the core ``GenerationSettings`` (model, context,
timeouts), ``home`` the citeline home folder.

``request.model`` selects what generates: ``None`` (or the base model's name) is the base model, any
other name is a LoRA adapter the backend has loaded (vLLM serves adapters under their own model names;
the embedded backend switches peft adapters per request). Backends that host adapters also implement
:class:`AdapterHost`.

Every backend must:

- ``generate`` → :class:`Generation` (whole text) and ``stream`` → text deltas, same content;
- honour ``request.stop``: end before the first stop string would appear (hold back text that may begin
  one), and report ``Generation.finish_reason`` ``"stop"`` or ``"length"``. For a stream, the generator
  ``stream`` returns may *return* the finish reason (``StopIteration.value``; in a generator,
  ``reason = yield from backend.stream(request)``); ``None`` there means the backend does not say
  (the embedded backend always does);
- ``count_tokens`` with the model's own tokenizer (the prompt builder's budget depends on it);
- raise :class:`citeline.errors.GenerationError` (message names the backend and the fix) when the model
  cannot answer at all (server down, timeout after retries, unknown adapter).

Optional class attributes: ``max_concurrency`` (how many generations it runs at once; the server's default
``generation.max_concurrent``: the embedded backend says 1) and ``serves_adapters = False`` for a backend
without adapters (``extractive``): a team's adapter is then not routed to it, the base answers with a note.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol, runtime_checkable

__all__ = [
    "AdapterHost",
    "ChatMessage",
    "Evidence",
    "Generation",
    "GenerationBackend",
    "GenerationRequest",
]

Role = Literal["system", "user", "assistant"]


@dataclass(frozen=True)
class ChatMessage:
    role: Role
    content: str


@dataclass(frozen=True)
class Evidence:
    """One numbered piece of evidence as it appears in the prompt (``[n]``)."""

    n: int
    chunk_id: int
    document_id: int
    title: str
    url: str | None
    text: str
    score: float


@dataclass(frozen=True)
class GenerationRequest:
    messages: tuple[ChatMessage, ...]
    model: str | None = None
    max_tokens: int = 256
    temperature: float = 0.0
    # Stop sequences: generation ends before the first one would be emitted (finish_reason "stop").
    stop: tuple[str, ...] = ()
    # The evidence the messages quote, for backends that answer without a model (extractive).
    question: str = ""  # the standalone question retrieval used
    evidence: tuple[Evidence, ...] = field(default_factory=tuple)
    user_question: str = ""  # the user's own words, when ``question`` was rewritten from a conversation


@dataclass(frozen=True)
class Generation:
    text: str
    model: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str = "stop"  # "stop" (end of answer or a stop sequence) or "length" (max_tokens reached)


@runtime_checkable
class GenerationBackend(Protocol):
    """What the server and ``citeline ask`` consume."""

    name: str

    @property
    def base_model(self) -> str: ...

    def generate(self, request: GenerationRequest) -> Generation: ...

    def stream(self, request: GenerationRequest) -> Iterator[str]: ...

    def count_tokens(self, text: str) -> int: ...

    def models(self) -> list[str]:
        """The base model's name first, then every loaded adapter's name."""
        ...

    def close(self) -> None: ...


@runtime_checkable
class AdapterHost(Protocol):
    """A backend that loads, lists and unloads LoRA adapters at run time."""

    def load_adapter(self, name: str, path: Path) -> None: ...

    def unload_adapter(self, name: str) -> None: ...

    def adapters(self) -> dict[str, Path]: ...


def messages_text(messages: Sequence[ChatMessage]) -> str:
    """All message contents joined (for token counting and logs)."""
    return "\n".join(m.content for m in messages)
