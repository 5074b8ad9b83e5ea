"""Training data for team LoRA adapters: read, check, split.

Two JSONL shapes are accepted, one example per line (blank lines are skipped):

- chat: ``{"messages": [{"role": "system"|"user"|"assistant", "content": "..."}, ...]}``: an optional
  system message first, then user and assistant turns alternating, ending with the assistant's;
- prompt/completion: ``{"prompt": "...", "completion": "..."}`` (optionally ``"system": "..."``), read as
  one user turn and the assistant's reply.

:func:`check_data` returns a :class:`DataReport`: every problem with its line number (:class:`DataProblem`:
malformed JSON, schema errors, role order, empty or overlong examples, exact and near duplicates, too
few examples), the token length of every example (counted with the base model's chat template when a
counter is given) as a histogram, and a seeded, disjoint train / held-out split of the good examples.
Problems are data; nothing here raises for bad data. Training refuses to start on a report that is not
:attr:`DataReport.ok`.

Duplicates are judged on the user and assistant text (the system prompt is usually the same in every
example): *exact* after case folding and whitespace collapsing, *near* when the Jaccard similarity of
their word 3-gram sets is at least ``near_duplicate`` (0.85). Later lines are reported against the first.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from citeline.contracts.generator import ChatMessage

__all__ = [
    "DataIssue",
    "DataProblem",
    "DataReport",
    "Example",
    "Split",
    "TokenCounter",
    "chat_token_counter",
    "check_data",
    "data_hash",
    "read_examples",
    "split_examples",
    "word_token_counter",
]

ROLES = ("system", "user", "assistant")
TokenCounter = Callable[[Sequence[ChatMessage]], int]
_SHINGLE = 3
_COMMON_SHINGLE = 200  # shingles shared by more examples than this do not propose near-duplicate pairs


class DataIssue(StrEnum):
    MALFORMED_JSON = "malformed_json"
    SCHEMA = "schema"
    ROLE_ORDER = "role_order"
    EMPTY = "empty"
    OVERLONG = "overlong"
    DUPLICATE = "duplicate"
    NEAR_DUPLICATE = "near_duplicate"
    TOO_FEW = "too_few"


@dataclass(frozen=True)
class DataProblem:
    line: int | None  # 1-based line in the file; None for problems of the whole file
    kind: DataIssue
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}" if self.line is not None else self.message


@dataclass(frozen=True)
class Example:
    """One training example: the conversation, whose last message is the assistant's reply."""

    line: int
    messages: tuple[ChatMessage, ...]

    @property
    def prompt(self) -> tuple[ChatMessage, ...]:
        """Everything before the final assistant reply (what a model is asked at evaluation)."""
        return self.messages[:-1]

    @property
    def reference(self) -> str:
        return self.messages[-1].content

    @property
    def system(self) -> str | None:
        return self.messages[0].content if self.messages[0].role == "system" else None

    def as_json(self) -> dict[str, Any]:
        return {"messages": [{"role": m.role, "content": m.content} for m in self.messages]}


@dataclass(frozen=True)
class Split:
    train: tuple[Example, ...]
    heldout: tuple[Example, ...]


@dataclass(frozen=True)
class DataReport:
    path: Path
    data_hash: str
    lines: int  # non-blank lines read
    examples: tuple[Example, ...]  # examples that parsed and passed every per-example check
    problems: tuple[DataProblem, ...]
    token_counts: dict[int, int]  # line -> tokens, for every example that parsed
    histogram: tuple[tuple[int, int, int], ...]  # (from, to, count): to is exclusive
    split: Split
    max_tokens: int
    counter: str  # what counted the tokens

    @property
    def ok(self) -> bool:
        return not self.problems

    def counts(self) -> dict[str, int]:
        """Problems per kind, in :class:`DataIssue` order."""
        found: dict[str, int] = {}
        for kind in DataIssue:
            if n := sum(1 for p in self.problems if p.kind == kind):
                found[kind.value] = n
        return found

    def summary(self, limit: int = 10) -> str:
        """The problems as text, at most ``limit`` of them (for error messages)."""
        lines = [str(p) for p in self.problems[:limit]]
        if len(self.problems) > limit:
            lines.append(f"... and {len(self.problems) - limit} more")
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        tokens = sorted(self.token_counts.values())
        return {
            "path": str(self.path), "data_hash": self.data_hash, "ok": self.ok, "lines": self.lines,
            "examples": len(self.examples), "train": len(self.split.train), "heldout": len(self.split.heldout),
            "problems": [{"line": p.line, "kind": p.kind.value, "message": p.message} for p in self.problems],
            "problem_counts": self.counts(), "max_tokens": self.max_tokens, "counter": self.counter,
            "tokens": {"min": tokens[0] if tokens else 0, "max": tokens[-1] if tokens else 0,
                       "mean": round(sum(tokens) / len(tokens), 1) if tokens else 0.0},
            "histogram": [{"from": a, "to": b, "count": n} for a, b, n in self.histogram],
        }


# -- reading -----------------------------------------------------------------------------------------


def data_hash(path: Path) -> str:
    """sha256 of the data file's bytes (recorded in the adapter's manifest)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_examples(path: Path) -> tuple[list[Example], list[DataProblem], int]:
    """Parse every line: (examples that parsed with a valid schema and role order, problems, lines read)."""
    examples: list[Example] = []
    problems: list[DataProblem] = []
    lines = 0
    with Path(path).open(encoding="utf-8", errors="replace") as f:
        for number, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            lines += 1
            try:
                obj = json.loads(raw)
            except json.JSONDecodeError as exc:
                problems.append(DataProblem(number, DataIssue.MALFORMED_JSON, f"not valid JSON: {exc.msg} "
                                            f"(column {exc.colno}); each line must be one JSON object"))
                continue
            parsed = _parse(number, obj)
            if isinstance(parsed, DataProblem):
                problems.append(parsed)
            else:
                examples.append(parsed)
    return examples, problems, lines


def _parse(line: int, obj: Any) -> Example | DataProblem:
    def schema(message: str) -> DataProblem:
        return DataProblem(line, DataIssue.SCHEMA, message)

    if not isinstance(obj, dict):
        return schema(f"expected a JSON object, got {type(obj).__name__}")
    has_chat, has_pc = "messages" in obj, "prompt" in obj or "completion" in obj
    if has_chat and has_pc:
        return schema('use either "messages" or "prompt"/"completion", not both')
    if has_pc:
        return _parse_prompt_completion(line, obj, schema)
    if not has_chat:
        return schema('no "messages" list and no "prompt"/"completion" pair')
    raw = obj["messages"]
    if not isinstance(raw, list):
        return schema(f'"messages" must be a list, got {type(raw).__name__}')
    if not raw:
        return DataProblem(line, DataIssue.EMPTY, '"messages" is empty')
    messages = []
    for i, m in enumerate(raw, 1):
        if not isinstance(m, dict):
            return schema(f"message {i} must be an object with role and content, got {type(m).__name__}")
        role, content = m.get("role"), m.get("content")
        if role not in ROLES:
            return schema(f"message {i}: role must be one of {', '.join(ROLES)}, got {role!r}")
        if not isinstance(content, str):
            return schema(f"message {i} ({role}): content must be a string, got {type(content).__name__}")
        messages.append(ChatMessage(role, content))
    return _check_turns(line, tuple(messages))


def _parse_prompt_completion(line: int, obj: dict[str, Any],
                             schema: Callable[[str], DataProblem]) -> Example | DataProblem:
    for key in ("prompt", "completion"):
        if key not in obj:
            return schema(f'"{key}" is missing (prompt/completion lines need both)')
    for key in ("prompt", "completion", "system"):
        if key in obj and not isinstance(obj[key], str):
            return schema(f'"{key}" must be a string, got {type(obj[key]).__name__}')
    messages = [ChatMessage("system", obj["system"])] if "system" in obj else []
    messages += [ChatMessage("user", obj["prompt"]), ChatMessage("assistant", obj["completion"])]
    return _check_turns(line, tuple(messages))


def _check_turns(line: int, messages: tuple[ChatMessage, ...]) -> Example | DataProblem:
    for i, m in enumerate(messages, 1):
        if not m.content.strip():
            return DataProblem(line, DataIssue.EMPTY, f"message {i} ({m.role}) is empty")
    turns = messages[1:] if messages[0].role == "system" else messages
    expected = "user"
    for i, m in enumerate(turns, len(messages) - len(turns) + 1):
        if m.role != expected:
            where = "only first" if m.role == "system" else f"{expected!r} expected"
            return DataProblem(line, DataIssue.ROLE_ORDER, f"message {i} is {m.role!r} ({where}); the order is "
                               "an optional system message, then user and assistant turns alternating")
        expected = "assistant" if expected == "user" else "user"
    if not turns or turns[-1].role != "assistant":
        return DataProblem(line, DataIssue.ROLE_ORDER, "the last message must be the assistant's reply (the text "
                           "the adapter learns)")
    return Example(line, messages)


# -- checking ----------------------------------------------------------------------------------------


def word_token_counter(messages: Sequence[ChatMessage]) -> int:
    """A tokenizer-free estimate (words, plus 4 per message for the chat markup) for tests and dry runs."""
    return sum(len(m.content.split()) + 4 for m in messages)


def chat_token_counter(tokenizer: Any) -> TokenCounter:
    """Tokens of a conversation as the model sees it: the tokenizer's chat template applied."""
    def count(messages: Sequence[ChatMessage]) -> int:
        text = tokenizer.apply_chat_template([{"role": m.role, "content": m.content} for m in messages],
                                             tokenize=False)
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    count.__name__ = "the base model's chat template"
    return count


def check_data(path: Path, *, count_tokens: TokenCounter = word_token_counter, max_tokens: int = 1024,
               heldout: float = 0.1, seed: int = 0, near_duplicate: float = 0.85,
               min_examples: int = 8) -> DataReport:
    """Read and check ``path``; see the module docstring. ``count_tokens`` should be the base model's."""
    path = Path(path)
    parsed, problems, lines = read_examples(path)
    tokens = {e.line: count_tokens(e.messages) for e in parsed}
    good: list[Example] = []
    for e in parsed:
        if tokens[e.line] > max_tokens:
            problems.append(DataProblem(e.line, DataIssue.OVERLONG, f"{tokens[e.line]} tokens, over the limit of "
                                        f"{max_tokens}: shorten it or raise --max-tokens"))
        else:
            good.append(e)
    duplicates = _duplicates(good, near_duplicate)
    problems += duplicates
    dup_lines = {p.line for p in duplicates}
    kept = [e for e in good if e.line not in dup_lines]
    split = split_examples(kept, heldout=heldout, seed=seed)
    if len(kept) < min_examples or not split.train or not split.heldout:
        problems.append(DataProblem(None, DataIssue.TOO_FEW, f"{len(kept)} usable examples ({len(split.train)} "
                                    f"train, {len(split.heldout)} held out); at least {min_examples} are needed, "
                                    "with at least one held out"))
    problems.sort(key=lambda p: (p.line is None, p.line or 0))
    counter = getattr(count_tokens, "__name__", "a custom counter")
    return DataReport(path, data_hash(path), lines, tuple(kept), tuple(problems), tokens,
                      _histogram(tokens.values(), max_tokens), split, max_tokens,
                      "words (estimate)" if count_tokens is word_token_counter else counter)


def split_examples(examples: Sequence[Example], *, heldout: float = 0.1, seed: int = 0) -> Split:
    """A seeded shuffle in file order, then the first ``ceil(heldout * n)`` are held out (at least one of two)."""
    if not 0.0 <= heldout < 1.0:
        raise ValueError(f"heldout must be in [0, 1), got {heldout}")
    ordered = sorted(examples, key=lambda e: e.line)
    random.Random(seed).shuffle(ordered)
    n_held = math.ceil(heldout * len(ordered)) if heldout > 0 else 0
    if heldout > 0 and len(ordered) >= 2:
        n_held = max(1, min(n_held, len(ordered) - 1))
    held, train = ordered[:n_held], ordered[n_held:]
    return Split(tuple(sorted(train, key=lambda e: e.line)), tuple(sorted(held, key=lambda e: e.line)))


def _normal(text: str) -> str:
    return " ".join(text.casefold().split())


def _content(example: Example) -> str:
    return "\n".join(f"{m.role}: {_normal(m.content)}" for m in example.messages if m.role != "system")


def _shingles(text: str) -> frozenset[str]:
    words = re.findall(r"\w+", text)
    if len(words) < _SHINGLE:
        return frozenset([" ".join(words)])
    return frozenset(" ".join(words[i:i + _SHINGLE]) for i in range(len(words) - _SHINGLE + 1))


def _duplicates(examples: Sequence[Example], threshold: float) -> list[DataProblem]:
    problems: list[DataProblem] = []
    first_exact: dict[str, int] = {}
    kept: list[tuple[int, frozenset[str]]] = []  # (line, shingles) of examples that are not duplicates
    index: dict[str, list[int]] = defaultdict(list)  # shingle -> positions in kept
    for e in examples:
        key = _content(e)
        if key in first_exact:
            problems.append(DataProblem(e.line, DataIssue.DUPLICATE, f"same user and assistant text as line "
                                        f"{first_exact[key]}: remove one"))
            continue
        first_exact[key] = e.line
        sh = _shingles(key)
        candidates = {i for s in sh if len(index[s]) <= _COMMON_SHINGLE for i in index[s]}
        best = max(((len(sh & kept[i][1]) / len(sh | kept[i][1]), kept[i][0]) for i in candidates),
                   default=(0.0, 0))
        if best[0] >= threshold:
            problems.append(DataProblem(e.line, DataIssue.NEAR_DUPLICATE, f"{best[0]:.0%} the same as line "
                                        f"{best[1]} (word 3-grams): remove one or make them differ"))
            continue
        for s in sh:
            index[s].append(len(kept))
        kept.append((e.line, sh))
    return problems


def _histogram(values: Iterable[int], max_tokens: int) -> tuple[tuple[int, int, int], ...]:
    """Counts in power-of-two buckets from 0 up to past the longest example (and the limit)."""
    values = list(values)
    top = max([*values, max_tokens, 1])
    edges = [0, 32]
    while edges[-1] <= top:
        edges.append(edges[-1] * 2)
    return tuple((a, b, sum(1 for v in values if a <= v < b)) for a, b in zip(edges, edges[1:], strict=False))
