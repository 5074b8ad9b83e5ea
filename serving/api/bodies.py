"""Request bodies of the API, validated by pydantic; text PostgreSQL or the tokenizers would fail on is refused."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

__all__ = ["ASSISTANT_MODEL", "AskBody", "ChatBody", "ChatMessageBody", "KeyBody", "PrincipalBody", "StreamOptions"]

ASSISTANT_MODEL = "citeline"
_BAD_TEXT = re.compile(r"[\x00\ud800-\udfff]")  # PostgreSQL cannot store NUL; a lone surrogate is not UTF-8


def _bad_text(value: Any, path: str) -> tuple[str, str] | None:
    """The first string under ``value`` (keys included) that cannot be stored or encoded: (its path, what)."""
    if isinstance(value, str):
        m = _BAD_TEXT.search(value)
        if m is None:
            return None
        c = m.group()
        return path, "a NUL byte (\\u0000)" if c == "\x00" else f"a lone surrogate (\\u{ord(c):04x})"
    if isinstance(value, dict):
        for k, v in value.items():
            if isinstance(k, str) and _BAD_TEXT.search(k):
                return path or "body", "a key with a NUL byte or a lone surrogate"
            if found := _bad_text(v, f"{path}.{k}" if path else str(k)):
                return found
    elif isinstance(value, list):
        for i, v in enumerate(value):
            if found := _bad_text(v, f"{path}[{i}]"):
                return found
    return None


class _Body(BaseModel):
    """A request body: text that PostgreSQL or the tokenizers would fail on is refused here, naming the field
    (400 ``invalid_text``), so it never reaches a batch shared with other users' requests."""

    @model_validator(mode="before")
    @classmethod
    def _text_is_storable(cls, data: Any) -> Any:
        if (found := _bad_text(data, "")) is not None:
            field, problem = found
            fix = "remove it" if "NUL" in problem else "send valid UTF-8 text (a \\ud800-\\udfff escape must be " \
                "half of a surrogate pair)"
            raise PydanticCustomError("invalid_text", "{field} contains {problem}; {fix}",
                                      {"field": field, "problem": problem, "fix": fix})
        return data


class AskBody(_Body):
    question: str = Field(min_length=1, max_length=4000)
    model: str | None = Field(None, max_length=200)
    stream: bool = False


class ChatMessageBody(BaseModel):
    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: str | list[dict[str, Any]] | None = None


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatBody(_Body):
    model: str = Field(ASSISTANT_MODEL, max_length=200)
    messages: list[ChatMessageBody] = Field(min_length=1, max_length=200)
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(None, ge=1)  # capped at the server's generation.max_tokens
    max_completion_tokens: int | None = Field(None, ge=1)  # the newer name of max_tokens
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    stop: str | list[str] | None = None

    @field_validator("stop")
    @classmethod
    def _stops(cls, v: str | list[str] | None) -> list[str]:
        stops = [v] if isinstance(v, str) else list(v or [])
        if len(stops) > 4:
            raise ValueError("stop takes at most 4 sequences")
        if any(not s or len(s) > 200 for s in stops):
            raise ValueError("each stop sequence must be 1 to 200 characters")
        return stops


class KeyBody(_Body):
    user: str
    admin: bool = False
    label: str = ""


class PrincipalBody(_Body):
    user: str
    groups: list[str] = []
    team: str | None = None
