"""Training examples as token ids and batches, and the loss on them.

Each example is rendered with the base model's chat template; its labels keep the assistant turns' tokens
(the reply and its end-of-turn markup) and mask everything else with -100, so the loss is taken on what
the adapter should learn to say. Batches are right-padded; :func:`mean_loss` is a mean per token, with
the adapter's layers on or off (the base model's loss on the same examples).
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from citeline.errors import TrainingError
from citeline.lora.data import Example

if TYPE_CHECKING:
    import torch

__all__ = ["Encoded", "batch", "encode", "epoch_order", "loss", "mean_loss"]


@dataclass(frozen=True)
class Encoded:
    ids: list[int]
    labels: list[int]  # -100 where the loss is not taken


def encode(tokenizer: Any, example: Example, max_tokens: int) -> Encoded:
    """Token ids of the rendered conversation; labels only on the assistant turns' tokens."""
    chat = [{"role": m.role, "content": m.content} for m in example.messages]
    text = tokenizer.apply_chat_template(chat, tokenize=False)
    spans = []  # character spans of the assistant replies (with their end-of-turn markup)
    for i, m in enumerate(example.messages):
        if m.role != "assistant":
            continue
        before = tokenizer.apply_chat_template(chat[:i], tokenize=False, add_generation_prompt=True)
        through = tokenizer.apply_chat_template(chat[: i + 1], tokenize=False)
        if not text.startswith(through) or not through.startswith(before):
            raise TrainingError(f"line {example.line}: the chat template of {tokenizer.name_or_path} does not "
                                "render conversations incrementally; the assistant tokens cannot be located")
        spans.append((len(before), len(through)))
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"][:max_tokens], enc["offset_mapping"][:max_tokens]
    labels = [t if any(a <= start < b for a, b in spans) else -100 for t, (start, _) in zip(ids, offsets,
                                                                                          strict=True)]
    return Encoded(list(ids), labels)


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    order = list(range(n))
    random.Random(seed * 7919 + epoch).shuffle(order)
    return order


def batch(examples: Sequence[Encoded], pad_id: int | None, device: torch.device) -> dict[str, torch.Tensor]:
    import torch

    width = max(len(e.ids) for e in examples)
    pad = pad_id if pad_id is not None else 0
    ids = torch.full((len(examples), width), pad, dtype=torch.long)
    labels = torch.full((len(examples), width), -100, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, e in enumerate(examples):  # right padding; the mask keeps padding out of attention and loss
        ids[row, : len(e.ids)] = torch.tensor(e.ids)
        labels[row, : len(e.labels)] = torch.tensor(e.labels)
        mask[row, : len(e.ids)] = 1
    return {"input_ids": ids.to(device), "labels": labels.to(device), "attention_mask": mask.to(device)}


def loss(model: Any, examples: Sequence[Encoded], pad_id: int | None, device: torch.device) -> torch.Tensor:
    return model(**batch(examples, pad_id, device)).loss


def mean_loss(model: Any, examples: Sequence[Encoded], pad_id: int | None, batch_size: int,
               device: torch.device, *, adapter: bool) -> float:
    """Mean token loss over ``examples`` (assistant tokens), with the adapter's layers on or off."""
    import torch

    if not examples:
        return float("nan")
    was_training = model.training
    model.eval()
    total = tokens = 0.0
    with torch.no_grad(), (contextlib.nullcontext() if adapter else model.disable_adapter()):
        for i in range(0, len(examples), batch_size):
            chunk = examples[i: i + batch_size]
            n = sum(sum(1 for t in e.labels[1:] if t != -100) for e in chunk)
            for e in chunk:  # one at a time: the model's loss is a mean per batch, we want one per token
                k = sum(1 for t in e.labels[1:] if t != -100)
                total += float(loss(model, [e], pad_id, device)) * k
            tokens += n
    model.train(was_training)
    return total / max(tokens, 1.0)
