"""Earlier turns of a conversation, made safe to show a model and fitted to the prompt's budget.

:func:`clean_history` (used by the prompt and by :func:`citeline.answers.conversation.standalone_question`):
system turns are dropped (a client's system message never reaches the prompt as a system message), citation
markers ``[n]`` and the "Sources:" block are removed from earlier assistant answers (their numbers named other
evidence), chat template control tokens (``<|im_start|>``, ``[INST]``, ``</s>``, ...) are neutralised so a
turn cannot open a new role, each turn is clipped to :data:`MAX_TURN_CHARS`, and consecutive turns of one role
are merged (templates that require alternation accept the result).

:func:`prompt_history` keeps the most recent cleaned turns that fit a token budget (contiguous: it stops at
the first turn that does not fit) and never starts with an assistant turn.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

from citeline.contracts.generator import ChatMessage

__all__ = ["MAX_TURN_CHARS", "clean_history", "clip", "prompt_history"]

MAX_TURN_CHARS = 4000  # one earlier turn, before its tokens are counted

_CITE = re.compile(r"[ \t]*\[\d{1,3}(?:\s*,\s*\d{1,3})*\]")
_SOURCES = re.compile(r"(?:^|\n)[ \t]*\**Sources:?\**[ \t]*\n(?:.*\n?)*\Z", re.IGNORECASE)
_CONTROL = re.compile(r"<\|[^|<>\n]{0,40}\|>|\[/?INST\]|<</?SYS>>|</?s>|<(?:start|end)_of_turn>", re.IGNORECASE)


def clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def _clean_text(role: str, text: str) -> str:
    text = _CONTROL.sub(lambda m: m.group().replace("<", "‹").replace(">", "›").replace("[", "(")
                        .replace("]", ")"), text.replace("\r\n", "\n"))
    if role == "assistant":
        text = _SOURCES.sub("", text)
        text = _CITE.sub("", text)
        text = re.sub(r"[ \t]+([.,;:!?])", r"\1", text)
    return text.strip()


def clean_history(history: Sequence[ChatMessage]) -> tuple[ChatMessage, ...]:
    """User and assistant turns only, cleaned (see the module docstring), consecutive same-role turns merged."""
    out: list[ChatMessage] = []
    for m in history:
        if m.role not in ("user", "assistant"):
            continue
        text = _clean_text(m.role, clip(m.content or "", MAX_TURN_CHARS * 2))
        if not text:
            continue
        text = clip(text, MAX_TURN_CHARS)
        if out and out[-1].role == m.role:
            out[-1] = ChatMessage(m.role, clip(out[-1].content + "\n\n" + text, MAX_TURN_CHARS))
        else:
            out.append(ChatMessage(m.role, text))
    return tuple(out)


def prompt_history(history: Sequence[ChatMessage], count_tokens: Callable[[str], int],
                   budget_tokens: int) -> tuple[ChatMessage, ...]:
    """The most recent cleaned turns whose tokens (``count_tokens``) fit ``budget_tokens``, oldest first."""
    if budget_tokens <= 0:
        return ()
    kept: list[ChatMessage] = []
    used = 0
    for m in reversed(clean_history(history)):
        cost = count_tokens(m.content)
        if used + cost > budget_tokens:
            break
        kept.append(m)
        used += cost
    kept.reverse()
    while kept and kept[0].role != "user":
        kept.pop(0)  # a conversation shown to the model starts with the user
    return tuple(kept)
