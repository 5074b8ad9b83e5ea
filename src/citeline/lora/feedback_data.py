"""Training data from users' feedback: chat examples for SFT and preference pairs for DPO.

Each rated answer's prompt is rebuilt exactly as the assistant built it, from its audit row: the system
prompt, then the question with the evidence shown, numbered in the order it was shown, each chunk's text
and its document's title and URL (:func:`citeline.answers.prompt.build_prompt`). Chunks are never edited in
place (a re-indexed document gets new chunks), so a chunk id that still exists holds the text that was
shown. An answer is left out, and counted under its reason (:class:`Excluded`), when:

* ``evidence_not_visible``: a chunk it showed is no longer visible to every current member of the team
  (checked by the caller in PostgreSQL, as each member), or the team has no members;
* ``evidence_changed``: a chunk it showed no longer exists (its document was re-indexed or deleted);
* ``conversation``: it answered a follow-up (the audit row records how many earlier turns the prompt held,
  not their text, so the prompt cannot be rebuilt);
* ``no_answer``: neither the answer's text (a stream that never ended) nor a correction is known;
* ``overlong``: its chat example is longer than ``max_tokens`` (``adapter train`` would refuse the file).

Chat examples (``sft.jsonl``, what ``citeline adapter train`` reads): the prompt and the corrected answer
(any rating), else the up-voted answer; corrections come first, so a duplicate of a correction is the
answer that is dropped. They are de-duplicated exactly as ``citeline adapter check-data`` does
(:mod:`citeline.lora.data`), and ``adapter train`` splits them with the same ``--heldout`` and ``--seed``.

Preference pairs (``pairs.jsonl`` and ``pairs.heldout.jsonl``, TRL's conversational preference format:
``prompt``, ``chosen``, ``rejected`` as message lists): answers to the same prompt (the same question and
evidence) paired as chosen = a correction or an up-voted answer, rejected = a down-voted answer;
duplicates dropped, split by prompt (a prompt's pairs are all held out or all trained on) with the seed.

Drafts (``drafts.jsonl``): with a drafter (a larger model), a down-voted answer without a correction gets a
drafted one, written for review only (``"draft": true``), never into the training files.
"""

from __future__ import annotations

import json
import math
import random
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from citeline.answers.prompt import build_prompt
from citeline.contracts.generator import ChatMessage
from citeline.domain import SearchHit
from citeline.lora.data import Example, TokenCounter, _duplicates, word_token_counter

__all__ = ["Drafter", "EvidenceChunk", "Excluded", "FeedbackData", "PreferencePair", "RatedAnswer",
           "build_feedback_data"]

#: a larger model's corrected answer for (the prompt, the down-voted answer, the user's reason)
Drafter = Callable[[Sequence[ChatMessage], str, str], str]
_NO_BUDGET = 1 << 30  # every shown chunk was in the prompt: rebuild it without a token budget


class Excluded(StrEnum):
    NOT_VISIBLE = "evidence_not_visible"
    CHANGED = "evidence_changed"
    CONVERSATION = "conversation"
    NO_ANSWER = "no_answer"
    OVERLONG = "overlong"


@dataclass(frozen=True)
class RatedAnswer:
    """An answer's feedback with what its audit row recorded."""

    audit_id: int
    team: str | None
    model: str
    rating: int  # 1 up, -1 down
    reason: str
    correction: str | None
    question: str
    answer: str | None  # the delivered text (None: a stream that never ended)
    chunk_ids: tuple[int, ...]  # the evidence shown, in the order of its numbers [1], [2], ...
    history_turns: int = 0
    refused: bool = False


@dataclass(frozen=True)
class EvidenceChunk:
    chunk_id: int
    document_id: int
    title: str
    url: str | None
    text: str


@dataclass(frozen=True)
class PreferencePair:
    prompt: tuple[ChatMessage, ...]
    chosen: str
    rejected: str
    chosen_from: int  # audit ids
    rejected_from: int

    def as_json(self) -> dict[str, Any]:
        return {"prompt": [{"role": m.role, "content": m.content} for m in self.prompt],
                "chosen": [{"role": "assistant", "content": self.chosen}],
                "rejected": [{"role": "assistant", "content": self.rejected}],
                "feedback": {"chosen_from": self.chosen_from, "rejected_from": self.rejected_from}}


@dataclass
class FeedbackData:
    """What :func:`build_feedback_data` made of a team's feedback."""

    team: str
    rated: int
    examples: list[tuple[Example, dict[str, Any]]]  # de-duplicated, with where each came from
    duplicates: int
    pairs_train: list[PreferencePair]
    pairs_heldout: list[PreferencePair]
    drafts: list[dict[str, Any]] = field(default_factory=list)
    excluded: dict[str, int] = field(default_factory=dict)

    def write(self, folder: Path) -> dict[str, Path]:
        """``sft.jsonl``, ``pairs.jsonl``, ``pairs.heldout.jsonl`` (and ``drafts.jsonl`` when drafted) in
        ``folder``; the paths written."""
        folder.mkdir(parents=True, exist_ok=True)
        files = {"sft": folder / "sft.jsonl", "pairs": folder / "pairs.jsonl",
                 "pairs_heldout": folder / "pairs.heldout.jsonl"}
        _write_lines(files["sft"], [{**e.as_json(), "feedback": meta} for e, meta in self.examples])
        _write_lines(files["pairs"], [p.as_json() for p in self.pairs_train])
        _write_lines(files["pairs_heldout"], [p.as_json() for p in self.pairs_heldout])
        if self.drafts:
            files["drafts"] = folder / "drafts.jsonl"
            _write_lines(files["drafts"], self.drafts)
        return files

    def as_dict(self) -> dict[str, Any]:
        return {"team": self.team, "rated": self.rated, "examples": len(self.examples),
                "duplicates": self.duplicates, "pairs": len(self.pairs_train),
                "pairs_heldout": len(self.pairs_heldout), "drafts": len(self.drafts), "excluded": self.excluded}


def _write_lines(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    tmp.replace(path)


def _prompt(answer: RatedAnswer, chunks: Mapping[int, EvidenceChunk]) -> tuple[ChatMessage, ...]:
    hits = [SearchHit(c.chunk_id, c.document_id, "", "", c.title, c.url, c.text, None, None, 0.0)
            for c in (chunks[i] for i in answer.chunk_ids)]
    return build_prompt(answer.question, hits, lambda _: 0, evidence_tokens=_NO_BUDGET).messages


def _exclusion(answer: RatedAnswer, chunks: Mapping[int, EvidenceChunk], visible: frozenset[int]) -> Excluded | None:
    if answer.history_turns:
        return Excluded.CONVERSATION
    if any(i not in chunks for i in answer.chunk_ids):
        return Excluded.CHANGED
    if any(i not in visible for i in answer.chunk_ids):
        return Excluded.NOT_VISIBLE
    if answer.answer is None and answer.correction is None:
        return Excluded.NO_ANSWER
    return None


def _key(answer: RatedAnswer) -> tuple[str, tuple[int, ...]]:
    return " ".join(answer.question.casefold().split()), answer.chunk_ids


def build_feedback_data(team: str, answers: Sequence[RatedAnswer], chunks: Mapping[int, EvidenceChunk],
                        visible: frozenset[int], *, members: int = 1, heldout: float = 0.1, seed: int = 0,
                        near_duplicate: float = 0.85, drafter: Drafter | None = None,
                        count_tokens: TokenCounter = word_token_counter, max_tokens: int = 1024) -> FeedbackData:
    """SFT examples, preference pairs and (with ``drafter``) drafts from ``team``'s rated answers.

    ``chunks``: what the shown chunk ids hold now; ``visible``: the chunk ids every current member of the
    team may see; ``members``: how many members the team has (none: everything is excluded, fail closed);
    ``count_tokens`` and ``max_tokens``: as for ``check-data`` (the base model's counter).
    """
    excluded: Counter[str] = Counter()
    usable: list[tuple[RatedAnswer, tuple[ChatMessage, ...]]] = []
    for a in answers:
        why = Excluded.NOT_VISIBLE if members == 0 else _exclusion(a, chunks, visible)
        if why is not None:
            excluded[why.value] += 1
            continue
        usable.append((a, _prompt(a, chunks)))
    examples, overlong, duplicates = _sft(usable, near_duplicate, count_tokens, max_tokens)
    if overlong:
        excluded[Excluded.OVERLONG.value] += overlong
    pairs_train, pairs_held = _pairs(usable, heldout=heldout, seed=seed)
    drafts = _drafts(usable, drafter) if drafter is not None else []
    return FeedbackData(team, len(answers), examples, duplicates, pairs_train, pairs_held, drafts, dict(excluded))


def _sft(usable: Sequence[tuple[RatedAnswer, tuple[ChatMessage, ...]]], near_duplicate: float,
         count_tokens: TokenCounter, max_tokens: int) -> tuple[list[tuple[Example, dict[str, Any]]], int, int]:
    """The chat examples (overlong ones left out, then duplicates as check-data judges them), how many were
    overlong, how many duplicates."""
    candidates: list[tuple[int, int, tuple[ChatMessage, ...], str, dict[str, Any]]] = []
    for a, prompt in usable:
        if a.correction is not None:
            target, kind = a.correction, "corrected"
        elif a.rating > 0 and a.answer:
            target, kind = a.answer, "accepted"
        else:
            continue
        meta = {"audit_id": a.audit_id, "model": a.model, "rating": "up" if a.rating > 0 else "down", "target": kind}
        candidates.append((0 if kind == "corrected" else 1, a.audit_id, prompt, target, meta))
    candidates.sort(key=lambda c: (c[0], c[1]))
    examples = [(Example(i, (*prompt, ChatMessage("assistant", target))), meta)
                for i, (_, _, prompt, target, meta) in enumerate(candidates, 1)]
    fitting = [(e, m) for e, m in examples if count_tokens(e.messages) <= max_tokens]
    dropped = {p.line for p in _duplicates([e for e, _ in fitting], near_duplicate)}
    return [(e, m) for e, m in fitting if e.line not in dropped], len(examples) - len(fitting), len(dropped)


def _pairs(usable: Sequence[tuple[RatedAnswer, tuple[ChatMessage, ...]]], *, heldout: float,
           seed: int) -> tuple[list[PreferencePair], list[PreferencePair]]:
    groups: dict[tuple[str, tuple[int, ...]], list[tuple[RatedAnswer, tuple[ChatMessage, ...]]]] = defaultdict(list)
    for a, prompt in usable:
        groups[_key(a)].append((a, prompt))
    by_prompt: dict[tuple[str, tuple[int, ...]], list[PreferencePair]] = {}
    for key, members in groups.items():
        chosen = [(a.correction, a.audit_id) for a, _ in members if a.correction is not None]
        chosen += [(a.answer, a.audit_id) for a, _ in members if a.rating > 0 and a.answer and a.correction is None]
        rejected = [(a.answer, a.audit_id) for a, _ in members if a.rating < 0 and a.answer]
        prompt = members[0][1]
        seen: set[tuple[str, str]] = set()
        pairs = []
        for r_text, r_id in rejected:
            for c_text, c_id in chosen:
                norm = (" ".join(c_text.casefold().split()), " ".join(r_text.casefold().split()))
                if norm[0] == norm[1] or norm in seen:
                    continue
                seen.add(norm)
                pairs.append(PreferencePair(prompt, c_text, r_text, c_id, r_id))
        if pairs:
            by_prompt[key] = pairs
    keys = sorted(by_prompt)
    random.Random(seed).shuffle(keys)
    n_held = math.ceil(heldout * len(keys)) if heldout > 0 and len(keys) >= 2 else 0
    held = [p for k in keys[:n_held] for p in by_prompt[k]]
    train = [p for k in keys[n_held:] for p in by_prompt[k]]
    return train, held


def _drafts(usable: Sequence[tuple[RatedAnswer, tuple[ChatMessage, ...]]], drafter: Drafter) -> list[dict[str, Any]]:
    out = []
    for a, prompt in usable:
        if a.rating > 0 or a.correction is not None or not a.answer:
            continue
        text = drafter(prompt, a.answer, a.reason).strip()
        if not text:
            continue
        out.append({"messages": [{"role": m.role, "content": m.content} for m in prompt]
                    + [{"role": "assistant", "content": text}],
                    "draft": True, "review": "drafted by a model, not by a person: check it against the evidence, "
                    "then move the line into sft.jsonl (without this field) to train on it",
                    "feedback": {"audit_id": a.audit_id, "model": a.model, "rating": "down", "reason": a.reason,
                                 "rejected": a.answer}})
    return out
