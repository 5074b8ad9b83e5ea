"""Training a team's LoRA adapter: checked data in, a vLLM-loadable PEFT folder with a manifest out.

:func:`train_adapter` runs a small training loop of its own on peft and torch (TRL's SFTTrainer would
bring datasets, pandas and pyarrow for what is here ~150 lines, and we need exact control of checkpoints):

- the data is checked first (:func:`citeline.lora.data.check_data` with the base model's chat template);
  a report with problems raises :class:`~citeline.errors.TrainingError` and nothing is trained;
- each example is rendered with the base model's chat template and the loss is taken on the assistant's
  tokens only (its reply and end-of-turn marker); system and user tokens are masked out;
- LoRA on the Llama-style linear layers only (``target_modules`` within
  :data:`citeline.lora.manifest.LLAMA_MODULES`, never ``modules_to_save``: vLLM serves LoRA deltas only);
- checkpoints every ``save_every`` steps in ``<output>/checkpoints/step-NNNNNN`` (adapter weights, optimizer
  and schedule, the step); a run that finds checkpoints of the same configuration continues from the last
  one, and its batches, dropout and schedule are the same as an uninterrupted run's (the epoch order and
  the random state are derived from the seed and the step). A ``stop`` event (the CLI sets it on Ctrl-C
  or SIGTERM) ends the run after the current step with a checkpoint;
- ``qlora=True`` loads the base in 4 bits (bitsandbytes NF4) on a CUDA GPU, and refuses with a message
  naming what is missing when there is no GPU or no bitsandbytes;
- at the end: held-out loss, ``save_pretrained`` into ``output``, :class:`citeline.lora.manifest.AdapterManifest`
  (base model name and fingerprint, rank, target modules, team, data hash, metrics), ``citeline_training.json``
  (the hyper-parameters and split, read by evaluation), then :func:`citeline.lora.manifest.preflight` on the
  result: an adapter the server would refuse is an error here, not at deploy time.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import random
import shutil
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from citeline.lora.data import DataReport, Example, chat_token_counter, check_data
from citeline.lora.manifest import LLAMA_MODULES, MANIFEST, AdapterManifest, base_model_fingerprint, preflight
from citeline.errors import TrainingError

if TYPE_CHECKING:
    import torch

__all__ = ["DEFAULT_TARGETS", "TRAINING_FILE", "TrainingConfig", "TrainingProgress", "TrainingResult",
           "qlora_missing", "train_adapter"]

TRAINING_FILE = "citeline_training.json"
DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
_CHECKPOINTS = "checkpoints"
_STATE = "state.json"  # written last inside a checkpoint: its presence means the checkpoint is complete
_KEEP_CHECKPOINTS = 2


@dataclass(frozen=True)
class TrainingConfig:
    team: str
    data: Path
    output: Path
    base_model: Path  # a local Hugging Face model folder (never a hub id)
    rank: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: tuple[str, ...] = DEFAULT_TARGETS
    epochs: int = 2
    learning_rate: float = 1e-3
    batch_size: int = 4
    max_tokens: int = 1024
    heldout: float = 0.1
    seed: int = 0
    save_every: int = 10
    qlora: bool = False
    threads: int | None = None  # torch CPU threads (default: all cores)

    def same_run(self) -> dict[str, Any]:
        """What must match for a checkpoint to be continued (the data hash is added by the trainer)."""
        keys = ("rank", "alpha", "dropout", "target_modules", "epochs", "learning_rate", "batch_size",
                "max_tokens", "heldout", "seed", "qlora")
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items() if k in keys}


@dataclass(frozen=True)
class TrainingProgress:
    step: int
    total_steps: int
    epoch: int
    loss: float
    learning_rate: float
    elapsed_s: float


@dataclass(frozen=True)
class TrainingResult:
    output: Path
    completed: bool  # False: stopped early; a checkpoint holds the progress, run again to continue
    step: int
    total_steps: int
    resumed_from: int  # the checkpoint step it started from (0: from scratch)
    seconds: float
    train_loss: float | None = None  # mean over the last epoch's steps
    heldout_loss: float | None = None
    base_heldout_loss: float | None = None
    manifest: AdapterManifest | None = None
    report: DataReport | None = None
    losses: tuple[float, ...] = field(default_factory=tuple)


def qlora_missing() -> list[str]:
    """What QLoRA needs and this machine lacks (empty: QLoRA can run)."""
    import torch

    missing = []
    if not torch.cuda.is_available():
        build = "a CPU-only build" if "+cpu" in torch.__version__ else "no CUDA device visible"
        missing.append(f"a CUDA GPU (torch {torch.__version__}: {build})")
    if importlib.util.find_spec("bitsandbytes") is None:
        missing.append("the bitsandbytes package (pip install bitsandbytes)")
    return missing


def train_adapter(config: TrainingConfig, *, progress: Callable[[TrainingProgress], None] | None = None,
                  stop: threading.Event | None = None, resume: bool = True) -> TrainingResult:
    """Train (or continue training) ``config.team``'s adapter into ``config.output``; see the module docstring."""
    started = time.monotonic()
    _check_config(config)
    if config.qlora and (missing := qlora_missing()):
        raise TrainingError(f"--qlora needs {' and '.join(missing)}; this machine lacks them. Train without "
                            "--qlora (full-precision LoRA, fine on CPU for small models) or run on a GPU machine")
    _quiet()
    import torch
    from transformers import AutoTokenizer

    if config.threads:
        torch.set_num_threads(config.threads)
    tokenizer = AutoTokenizer.from_pretrained(config.base_model, local_files_only=True)
    if not tokenizer.chat_template:
        raise TrainingError(f"the tokenizer in {config.base_model} has no chat template: use an instruct model")
    report = check_data(config.data, count_tokens=chat_token_counter(tokenizer), max_tokens=config.max_tokens,
                        heldout=config.heldout, seed=config.seed)
    if not report.ok:
        raise TrainingError(f"{config.data} has {len(report.problems)} problem(s); fix them and train again "
                            f"(`citeline adapter check-data {config.data}` lists them all):\n{report.summary()}")
    train = [_encode(tokenizer, e, config.max_tokens) for e in report.split.train]
    heldout = [_encode(tokenizer, e, config.max_tokens) for e in report.split.heldout]
    run_key = {**config.same_run(), "data_hash": report.data_hash}

    model, device = _load_model(config)
    base_heldout = _mean_loss(model, heldout, tokenizer.pad_token_id, config.batch_size, device, adapter=False)
    steps_per_epoch = math.ceil(len(train) / config.batch_size)
    total = steps_per_epoch * config.epochs
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=config.learning_rate,
                                  weight_decay=0.0)
    warmup = max(1, total // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min((s + 1) / warmup, max(0.0, (total - s) / max(1, total - warmup))))
    checkpoints = config.output / _CHECKPOINTS
    start, losses = _resume(checkpoints, run_key, model, optimizer, schedule) if resume else (0, [])
    if not resume and checkpoints.exists():
        shutil.rmtree(checkpoints)

    model.train()
    step = start
    while step < total:
        epoch, offset = divmod(step, steps_per_epoch)
        batch_ids = _epoch_order(len(train), config.seed, epoch)[offset * config.batch_size:
                                                                  (offset + 1) * config.batch_size]
        torch.manual_seed(config.seed * 1_000_003 + step)  # dropout: the same whether resumed or not
        loss = _loss(model, [train[i] for i in batch_ids], tokenizer.pad_token_id, device)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        losses.append(float(loss.detach()))
        if progress is not None:
            progress(TrainingProgress(step, total, epoch + 1, losses[-1], schedule.get_last_lr()[0],
                                      time.monotonic() - started))
        stopping = stop is not None and stop.is_set()
        if step < total and (step % config.save_every == 0 or stopping):
            _save_checkpoint(checkpoints, step, run_key, model, optimizer, schedule, losses)
        if stopping and step < total:
            return TrainingResult(config.output, False, step, total, start, time.monotonic() - started,
                                  report=report, losses=tuple(losses))

    heldout_loss = _mean_loss(model, heldout, tokenizer.pad_token_id, config.batch_size, device, adapter=True)
    train_loss = sum(losses[-steps_per_epoch:]) / len(losses[-steps_per_epoch:])
    seconds = time.monotonic() - started
    manifest = _save(config, model, report, {
        "train_loss": round(train_loss, 4), "heldout_loss": round(heldout_loss, 4),
        "base_heldout_loss": round(base_heldout, 4), "steps": float(total), "epochs": float(config.epochs),
        "train_examples": float(len(train)), "heldout_examples": float(len(heldout)),
        "train_seconds": round(seconds, 1)})
    shutil.rmtree(checkpoints, ignore_errors=True)
    return TrainingResult(config.output, True, total, total, start, seconds, train_loss, heldout_loss, base_heldout,
                          manifest, report, tuple(losses))


# -- set-up ------------------------------------------------------------------------------------------


def _quiet() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def _check_config(config: TrainingConfig) -> None:
    if not (Path(config.base_model) / "config.json").is_file():
        raise TrainingError(f"--base {config.base_model} is not a local Hugging Face model folder (no config.json); "
                            "point it at one, or leave it out for the built-in SmolLM2-135M-Instruct")
    if not Path(config.data).is_file():
        raise TrainingError(f"--data {config.data} does not exist: pass a JSONL file of training examples")
    if unsupported := sorted(set(config.target_modules) - LLAMA_MODULES):
        raise TrainingError(f"target modules {unsupported} are not servable LoRA targets; choose among "
                            f"{sorted(LLAMA_MODULES)}")
    if config.rank < 1 or config.epochs < 1 or config.batch_size < 1 or config.save_every < 1:
        raise TrainingError("--rank, --epochs, --batch-size and --save-every must be at least 1")
    if (Path(config.output) / MANIFEST).exists():
        raise TrainingError(f"{config.output} already holds a trained adapter: choose another --output, or remove "
                            "that folder to train it again")
    if not config.team.strip():
        raise TrainingError("--team must name the team the adapter is for")


def _load_model(config: TrainingConfig) -> tuple[Any, torch.device]:
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    kwargs: dict[str, Any] = {"local_files_only": True}
    if config.qlora:
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16)
        kwargs["device_map"] = {"": 0}
    else:
        kwargs["dtype"] = torch.float32
    try:
        base = AutoModelForCausalLM.from_pretrained(config.base_model, **kwargs)
    except (OSError, ValueError) as exc:
        raise TrainingError(f"cannot load the base model in {config.base_model}: {exc}") from exc
    if config.qlora:
        base = prepare_model_for_kbit_training(base, use_gradient_checkpointing=False)
    else:
        base.to(device)
    torch.manual_seed(config.seed)  # LoRA A's initialisation
    lora = LoraConfig(r=config.rank, lora_alpha=config.alpha, lora_dropout=config.dropout,
                      target_modules=list(config.target_modules), task_type="CAUSAL_LM", bias="none")
    return get_peft_model(base, lora), device


# -- data --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Encoded:
    ids: list[int]
    labels: list[int]  # -100 where the loss is not taken


def _encode(tokenizer: Any, example: Example, max_tokens: int) -> _Encoded:
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
    return _Encoded(list(ids), labels)


def _epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    order = list(range(n))
    random.Random(seed * 7919 + epoch).shuffle(order)
    return order


def _batch(examples: Sequence[_Encoded], pad_id: int | None, device: torch.device) -> dict[str, torch.Tensor]:
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


def _loss(model: Any, examples: Sequence[_Encoded], pad_id: int | None, device: torch.device) -> torch.Tensor:
    return model(**_batch(examples, pad_id, device)).loss


def _mean_loss(model: Any, examples: Sequence[_Encoded], pad_id: int | None, batch_size: int,
               device: torch.device, *, adapter: bool) -> float:
    """Mean token loss over ``examples`` (assistant tokens), with the adapter's layers on or off."""
    import contextlib

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
                total += float(_loss(model, [e], pad_id, device)) * k
            tokens += n
    model.train(was_training)
    return total / max(tokens, 1.0)


# -- checkpoints -------------------------------------------------------------------------------------


def _save_checkpoint(folder: Path, step: int, run_key: dict[str, Any], model: Any, optimizer: Any, schedule: Any,
                     losses: list[float]) -> None:
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"step-{step:06d}"
    tmp = folder / f".step-{step:06d}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    torch.save({"optimizer": optimizer.state_dict(), "schedule": schedule.state_dict()}, tmp / "optimizer.pt")
    (tmp / _STATE).write_text(json.dumps({"step": step, "run": run_key, "losses": losses}) + "\n")
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    for old in _checkpoints(folder)[:-_KEEP_CHECKPOINTS]:
        shutil.rmtree(old, ignore_errors=True)


def _checkpoints(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.glob("step-*") if (p / _STATE).is_file())


def _resume(folder: Path, run_key: dict[str, Any], model: Any, optimizer: Any,
            schedule: Any) -> tuple[int, list[float]]:
    """Load the last complete checkpoint into model, optimizer and schedule: (its step, its losses)."""
    found = _checkpoints(folder)
    if not found:
        return 0, []
    import torch
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    last = found[-1]
    state = json.loads((last / _STATE).read_text())
    if state["run"] != run_key:
        changed = sorted(k for k in run_key if state["run"].get(k) != run_key[k])
        raise TrainingError(f"{folder} holds checkpoints of another training run (different {', '.join(changed)}); "
                            "train into another --output, or pass --fresh to discard them")
    set_peft_model_state_dict(model, load_file(str(last / "adapter_model.safetensors")))
    saved = torch.load(last / "optimizer.pt", weights_only=True)
    optimizer.load_state_dict(saved["optimizer"])
    schedule.load_state_dict(saved["schedule"])
    return int(state["step"]), [float(x) for x in state["losses"]]


# -- output ------------------------------------------------------------------------------------------


def _save(config: TrainingConfig, model: Any, report: DataReport, metrics: dict[str, float]) -> AdapterManifest:
    output = Path(config.output)
    output.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output)
    (output / "README.md").unlink(missing_ok=True)  # peft's model-card stub says nothing true about this adapter
    base = Path(config.base_model)
    manifest = AdapterManifest(base_model=base.name, base_fingerprint=base_model_fingerprint(base), rank=config.rank,
                               target_modules=tuple(config.target_modules), team=config.team,
                               data_hash=report.data_hash, metrics=metrics)
    manifest.write(output)
    training = {"team": config.team, "data": str(Path(config.data).resolve()), "data_hash": report.data_hash,
                "base_model": str(base.resolve()), **config.same_run(), "train_lines": [e.line for e in
                report.split.train], "heldout_lines": [e.line for e in report.split.heldout],
                "finished_at": datetime.now(UTC).isoformat(timespec="seconds")}
    (output / TRAINING_FILE).write_text(json.dumps(training, indent=2) + "\n")
    problems = preflight(output, base_model_dir=base, max_rank=config.rank)
    if problems:
        raise TrainingError(f"the trained adapter in {output} would be refused by a server: "
                            + "; ".join(p.message for p in problems))
    return manifest
