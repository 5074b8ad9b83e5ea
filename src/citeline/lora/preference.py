"""Preference tuning of a team's adapter (DPO) on the pairs ``citeline adapter data from-feedback`` writes.

:func:`train_dpo` is Direct Preference Optimization (Rafailov et al., 2023) in a small loop of its own on peft
and torch, like :mod:`citeline.lora.training` (TRL's DPOTrainer would bring datasets, pandas and pyarrow):

- the data is TRL's conversational preference format, one pair per line: ``{"prompt": [messages],
  "chosen": [{"role": "assistant", ...}], "rejected": [{"role": "assistant", ...}]}`` (``chosen`` and
  ``rejected`` may also be plain strings); problems are reported by line and nothing is trained;
- the policy starts from the base model with a fresh LoRA, or from an existing adapter (the team's current
  one: ``start_from``), and the reference is the policy as it starts: its log-probabilities of every chosen
  and rejected answer are computed once, before the first step (so no second model is held in memory);
- loss ``-log σ(β · ((log π(chosen) - log π_ref(chosen)) - (log π(rejected) - log π_ref(rejected))))``,
  on the answer's tokens only (the prompt is masked, as in SFT: :func:`citeline.lora.batches.encode`);
- a seeded held-out share of the pairs is scored before and after (DPO loss, and the share of pairs where
  the adapter prefers the chosen answer more than the reference does); the held-out pairs' prompts with
  their chosen answers are written as ``dpo_heldout.jsonl`` in the adapter folder, which
  ``citeline_training.json`` names as the evaluation data, so ``citeline adapter eval`` (against the base,
  the prompting baseline and, through the registry, the current adapter) and ``adapter register``'s
  preflight run on it as on any adapter.

``qlora=True`` loads the base in 4 bits on a CUDA GPU, as SFT does (the adapter's weights stay in full
precision). Not here (yet): checkpoints and resuming (a DPO run on feedback pairs is short).
"""

from __future__ import annotations

import json
import math
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from citeline.contracts.generator import ChatMessage
from citeline.errors import TrainingError
from citeline.lora.batches import Encoded, batch, encode
from citeline.lora.data import ROLES, Example, data_hash
from citeline.lora.manifest import MANIFEST, AdapterManifest, base_model_fingerprint, preflight
from citeline.lora.training import (
    TRAINING_FILE,
    TrainingConfig,
    TrainingProgress,
    TrainingResult,
    _check_config,
    _load_model,
    _optimizer,
    _quiet,
    qlora_missing,
)

__all__ = ["HELDOUT_FILE", "PreferencePairLine", "read_pairs", "train_dpo"]

HELDOUT_FILE = "dpo_heldout.jsonl"


@dataclass(frozen=True)
class PreferencePairLine:
    line: int
    prompt: tuple[ChatMessage, ...]
    chosen: str
    rejected: str

    def example(self, text: str) -> Example:
        return Example(self.line, (*self.prompt, ChatMessage("assistant", text)))


def _answer(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], dict) \
            and value[0].get("role") == "assistant" and isinstance(value[0].get("content"), str):
        return str(value[0]["content"])
    return None


def _parse_pair(number: int, obj: Any) -> PreferencePairLine | str:
    if not isinstance(obj, dict) or not isinstance(obj.get("prompt"), list) or not obj["prompt"]:
        return "expected an object with a non-empty \"prompt\" message list"
    prompt = []
    for i, m in enumerate(obj["prompt"], 1):
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            return f"prompt message {i} needs a role ({', '.join(ROLES)}) and a string content"
        prompt.append(ChatMessage(m["role"], m["content"]))
    if prompt[-1].role != "user":
        return "the prompt must end with the user's message"
    chosen, rejected = _answer(obj.get("chosen")), _answer(obj.get("rejected"))
    if not chosen or not rejected or not chosen.strip() or not rejected.strip():
        return "\"chosen\" and \"rejected\" must each be a non-empty answer (a string, or one assistant message)"
    if chosen.strip() == rejected.strip():
        return "\"chosen\" and \"rejected\" are the same answer: nothing to prefer"
    return PreferencePairLine(number, tuple(prompt), chosen, rejected)


def read_pairs(path: Path) -> tuple[list[PreferencePairLine], list[str]]:
    """Every pair of ``path`` that parses, and a problem per line that does not (``line N: ...``)."""
    pairs: list[PreferencePairLine] = []
    problems: list[str] = []
    with Path(path).open(encoding="utf-8", errors="replace") as f:
        for number, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                parsed = _parse_pair(number, json.loads(raw))
            except json.JSONDecodeError as exc:
                parsed = f"not valid JSON: {exc.msg}"
            if isinstance(parsed, str):
                problems.append(f"line {number}: {parsed}")
            else:
                pairs.append(parsed)
    return pairs, problems


@dataclass(frozen=True)
class _Encoded:
    chosen: Encoded
    rejected: Encoded


def _logps(model: Any, encoded: Sequence[Encoded], pad_id: int | None, device: Any) -> Any:
    """Sum of the log-probabilities of each example's answer tokens (the labelled ones)."""
    import torch

    b = batch(encoded, pad_id, device)
    logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits[:, :-1].float()
    labels = b["labels"][:, 1:]
    mask = labels != -100
    picked = torch.log_softmax(logits, dim=-1).gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (picked * mask).sum(-1)


def _pair_logps(model: Any, pairs: Sequence[_Encoded], pad_id: int | None, device: Any) -> tuple[Any, Any]:
    both = _logps(model, [p.chosen for p in pairs] + [p.rejected for p in pairs], pad_id, device)
    return both[: len(pairs)], both[len(pairs):]


def _dpo_loss(policy: tuple[Any, Any], reference: tuple[Any, Any], beta: float) -> tuple[Any, Any]:
    """The mean DPO loss and, per pair, whether the policy prefers chosen more than the reference does."""
    import torch

    margin = (policy[0] - reference[0]) - (policy[1] - reference[1])
    return -torch.nn.functional.logsigmoid(beta * margin).mean(), margin > 0


def _evaluate(model: Any, pairs: Sequence[_Encoded], reference: tuple[Any, Any], pad_id: int | None, device: Any,
              beta: float) -> tuple[float, float]:
    """(mean DPO loss, share of pairs preferred more than the reference does) on ``pairs``."""
    import torch

    if not pairs:
        return float("nan"), float("nan")
    was = model.training
    model.eval()
    with torch.no_grad():
        policy = _pair_logps(model, pairs, pad_id, device)
        value, better = _dpo_loss(policy, reference, beta)
    model.train(was)
    return float(value), float(better.float().mean())


def _reference(model: Any, pairs: Sequence[_Encoded], pad_id: int | None, device: Any,
               size: int) -> tuple[Any, Any]:
    import torch

    model.eval()
    chosen, rejected = [], []
    with torch.no_grad():
        for i in range(0, len(pairs), size):
            c, r = _pair_logps(model, pairs[i: i + size], pad_id, device)
            chosen.append(c)
            rejected.append(r)
    model.train()
    return (torch.cat(chosen), torch.cat(rejected)) if pairs else (torch.zeros(0), torch.zeros(0))


def train_dpo(config: TrainingConfig, *, beta: float = 0.1, start_from: Path | None = None,
              progress: Callable[[TrainingProgress], None] | None = None,
              stop: threading.Event | None = None) -> TrainingResult:
    """DPO on ``config.data`` (pairs) into ``config.output``; see the module docstring."""
    started = time.monotonic()
    _check_config(config)
    if config.qlora and (missing := qlora_missing()):
        raise TrainingError(f"--qlora needs {' and '.join(missing)}; this machine lacks them. Train without "
                            "--qlora (full-precision LoRA, fine on CPU for small models) or run on a GPU machine")
    if beta <= 0:
        raise TrainingError(f"--beta must be positive, not {beta}")
    pairs, problems = read_pairs(config.data)
    if problems or len(pairs) < 2:
        detail = "\n".join(problems[:10]) or f"{len(pairs)} pair(s): at least 2 are needed (one held out)"
        raise TrainingError(f"{config.data} cannot be trained on with --method dpo:\n{detail}")
    _quiet()
    import torch
    from transformers import AutoTokenizer

    if config.threads:
        torch.set_num_threads(config.threads)
    tokenizer = AutoTokenizer.from_pretrained(config.base_model, local_files_only=True)
    order = list(range(len(pairs)))
    random.Random(config.seed).shuffle(order)
    n_held = max(1, min(len(pairs) - 1, math.ceil(config.heldout * len(pairs)))) if config.heldout > 0 else 0
    held_idx, train_idx = sorted(order[:n_held]), sorted(order[n_held:])

    def enc(p: PreferencePairLine) -> _Encoded:
        return _Encoded(encode(tokenizer, p.example(p.chosen), config.max_tokens),
                        encode(tokenizer, p.example(p.rejected), config.max_tokens))

    train, held = [enc(pairs[i]) for i in train_idx], [enc(pairs[i]) for i in held_idx]
    model, device = _load_model(replace(config, start_from=start_from) if start_from else config)
    pad = tokenizer.pad_token_id
    ref_train = _reference(model, train, pad, device, config.batch_size)
    ref_held = _reference(model, held, pad, device, config.batch_size)
    before = _evaluate(model, held, ref_held, pad, device, beta)
    steps_per_epoch = math.ceil(len(train) / config.batch_size)
    total = steps_per_epoch * config.epochs
    optimizer, schedule = _optimizer(model, config.learning_rate, total)
    model.train()
    losses: list[float] = []
    for step in range(total):
        epoch, offset = divmod(step, steps_per_epoch)
        ids = list(range(len(train)))
        random.Random(config.seed * 7919 + epoch).shuffle(ids)
        chunk = ids[offset * config.batch_size:(offset + 1) * config.batch_size]
        torch.manual_seed(config.seed * 1_000_003 + step)
        policy = _pair_logps(model, [train[i] for i in chunk], pad, device)
        value, _ = _dpo_loss(policy, (ref_train[0][chunk], ref_train[1][chunk]), beta)
        value.backward()
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(value.detach()))
        if progress is not None:
            progress(TrainingProgress(step + 1, total, epoch + 1, losses[-1], schedule.get_last_lr()[0],
                                      time.monotonic() - started))
        if stop is not None and stop.is_set() and step + 1 < total:
            return TrainingResult(config.output, False, step + 1, total, 0, time.monotonic() - started,
                                  losses=tuple(losses))
    after = _evaluate(model, held, ref_held, pad, device, beta)
    seconds = time.monotonic() - started
    metrics = {"dpo_train_loss": round(sum(losses[-steps_per_epoch:]) / steps_per_epoch, 4),
               "dpo_heldout_loss": round(after[0], 4), "dpo_base_heldout_loss": round(before[0], 4),
               "dpo_heldout_preferred": round(after[1], 4), "steps": float(total), "epochs": float(config.epochs),
               "train_pairs": float(len(train)), "heldout_pairs": float(len(held)), "beta": beta,
               "train_seconds": round(seconds, 1)}
    manifest = _save(config, model, [pairs[i] for i in held_idx], metrics, beta=beta, start_from=start_from)
    return TrainingResult(config.output, True, total, total, 0, seconds, metrics["dpo_train_loss"], after[0],
                          before[0], manifest, None, tuple(losses))


def _save(config: TrainingConfig, model: Any, held: Sequence[PreferencePairLine], metrics: dict[str, float], *,
          beta: float, start_from: Path | None) -> AdapterManifest:
    output = Path(config.output)
    output.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output)
    (output / "README.md").unlink(missing_ok=True)
    heldout_file = output / HELDOUT_FILE  # the held-out pairs' prompts and chosen answers: what eval reads
    heldout_file.write_text("".join(json.dumps(p.example(p.chosen).as_json(), ensure_ascii=False) + "\n"
                                    for p in held), encoding="utf-8")
    base = Path(config.base_model)
    rank = int(json.loads((output / "adapter_config.json").read_text())["r"])
    targets = tuple(json.loads((output / "adapter_config.json").read_text())["target_modules"])
    manifest = AdapterManifest(base_model=base.name, base_fingerprint=base_model_fingerprint(base), rank=rank,
                               target_modules=tuple(sorted(targets)), team=config.team,
                               data_hash=data_hash(config.data), metrics=metrics)
    manifest.write(output)
    record = {"team": config.team, "method": "dpo", "beta": beta,
              "start_from": str(start_from.resolve()) if start_from else None,
              "pairs": str(Path(config.data).resolve()), "pairs_hash": manifest.data_hash,
              "data": str(heldout_file.resolve()), "data_hash": data_hash(heldout_file),
              "base_model": str(base.resolve()), **config.same_run(), "train_lines": [],
              "heldout_lines": list(range(1, len(held) + 1)),
              "finished_at": datetime.now(UTC).isoformat(timespec="seconds")}
    (output / TRAINING_FILE).write_text(json.dumps(record, indent=2) + "\n")
    problems = preflight(output, base_model_dir=base, max_rank=rank)
    if problems:
        raise TrainingError(f"the trained adapter in {output} would be refused by a server: "
                            + "; ".join(p.message for p in problems))
    assert (output / MANIFEST).is_file()
    return manifest
