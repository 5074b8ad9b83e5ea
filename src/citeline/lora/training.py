"""Training a team's LoRA adapter: checked data in, a vLLM-loadable PEFT folder with a manifest out.

:func:`train_adapter` runs a small training loop of its own on peft and torch (TRL's SFTTrainer would
bring datasets, pandas and pyarrow for what is here ~150 lines, and we need exact control of checkpoints):

- the data is checked first (:func:`citeline.lora.data.check_data` with the base model's chat template);
  a report with problems raises :class:`~citeline.errors.TrainingError` and nothing is trained;
- each example is rendered with the base model's chat template and the loss is taken on the assistant's
  tokens only (its reply and end-of-turn marker); system and user tokens are masked out
  (:mod:`citeline.lora.batches`);
- LoRA on the Llama-style linear layers only (``target_modules`` within
  :data:`citeline.lora.manifest.LLAMA_MODULES`, never ``modules_to_save``: vLLM serves LoRA deltas only);
- checkpoints every ``save_every`` steps in ``<output>/checkpoints/step-NNNNNN`` (adapter weights, optimizer
  and schedule, the step; :mod:`citeline.lora.checkpoints`); a run that finds checkpoints of the same
  configuration continues from the last one, and its batches, dropout and schedule are the same as an
  uninterrupted run's (the epoch order and the random state are derived from the seed and the step). A
  ``stop`` event (the CLI sets it on Ctrl-C or SIGTERM) ends the run after the current step with a checkpoint;
- ``qlora=True`` loads the base in 4 bits (bitsandbytes NF4) on a CUDA GPU, and refuses with a message
  naming what is missing when there is no GPU or no bitsandbytes;
- at the end: held-out loss, ``save_pretrained`` into ``output``, :class:`citeline.lora.manifest.AdapterManifest`
  (base model name and fingerprint, rank, target modules, team, data hash, metrics), ``citeline_training.json``
  (the hyper-parameters and split, read by evaluation), then :func:`citeline.lora.manifest.preflight` on the
  result: an adapter the server would refuse is an error here, not at deploy time;
- ``virtual_tokens`` set trains a soft prompt (peft prompt tuning, :mod:`citeline.lora.soft_prompt`) instead of
  a LoRA: the same data check, batches, loss masking, checkpoints and held-out loss, only the peft config differs;
  the output is a peft prompt-tuning folder whose manifest says ``soft_prompt`` (rank 0, no target modules).
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from citeline.errors import TrainingError
from citeline.lora.batches import Encoded, encode, epoch_order, loss, mean_loss
from citeline.lora.checkpoints import CHECKPOINTS, load_last_checkpoint, save_checkpoint
from citeline.lora.data import DataReport, chat_token_counter, check_data, data_hash
from citeline.lora.manifest import (
    ADAPTER_WEIGHTS,
    LLAMA_MODULES,
    MANIFEST,
    AdapterManifest,
    base_model_fingerprint,
    preflight,
)
from citeline.lora.soft_prompt import DEFAULT_INIT_TEXT, MAX_VIRTUAL_TOKENS, SOFT_PROMPT, prompt_tuning_config

if TYPE_CHECKING:
    import torch

__all__ = ["DEFAULT_TARGETS", "TRAINING_FILE", "TrainingConfig", "TrainingProgress", "TrainingResult",
           "qlora_missing", "train_adapter"]

TRAINING_FILE = "citeline_training.json"
DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


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
    start_from: Path | None = None  # an adapter folder to continue training (e.g. the team's active one)
    # set: train a soft prompt (peft prompt tuning) of this many virtual tokens instead of a LoRA adapter
    # (rank, alpha, dropout and target_modules then do not apply); init_text: its TEXT init (None: random)
    virtual_tokens: int | None = None
    init_text: str | None = DEFAULT_INIT_TEXT

    def same_run(self) -> dict[str, Any]:
        """What must match for a checkpoint to be continued (the data hash is added by the trainer)."""
        keys: tuple[str, ...] = ("rank", "alpha", "dropout", "target_modules", "epochs", "learning_rate",
                                 "batch_size", "max_tokens", "heldout", "seed", "qlora")
        if self.virtual_tokens is not None:  # a soft prompt: its own keys instead of the LoRA ones
            keys = tuple(k for k in keys if k not in ("rank", "alpha", "dropout", "target_modules"))
            keys += ("virtual_tokens", "init_text")
        run = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items() if k in keys}
        if self.start_from is not None:  # its weights' bytes: another adapter at the same path is another run
            run["start_from"] = data_hash(Path(self.start_from) / ADAPTER_WEIGHTS)
        return run


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



@dataclass
class _Run:
    """What the training loop works on."""

    config: TrainingConfig
    model: Any
    optimizer: Any
    schedule: Any
    device: torch.device
    pad_id: int | None
    train: list[Encoded]
    steps_per_epoch: int
    total: int


def train_adapter(config: TrainingConfig, *, progress: Callable[[TrainingProgress], None] | None = None,
                  stop: threading.Event | None = None, resume: bool = True) -> TrainingResult:
    """Train (or continue training) ``config.team``'s adapter into ``config.output``; see the module docstring."""
    started = time.monotonic()
    config = _with_start_shape(config)
    _check_config(config)
    if config.qlora and (missing := qlora_missing()):
        raise TrainingError(f"--qlora needs {' and '.join(missing)}; this machine lacks them. Train without "
                            "--qlora (full-precision LoRA, fine on CPU for small models) or run on a GPU machine")
    _quiet()
    import torch

    if config.threads:
        torch.set_num_threads(config.threads)
    tokenizer, report = _tokenizer_and_data(config)
    train = [encode(tokenizer, e, config.max_tokens) for e in report.split.train]
    heldout = [encode(tokenizer, e, config.max_tokens) for e in report.split.heldout]
    run_key = {**config.same_run(), "data_hash": report.data_hash}

    model, device = _load_model(config)
    base_heldout = mean_loss(model, heldout, tokenizer.pad_token_id, config.batch_size, device, adapter=False)
    before = {} if config.start_from is None else {"start_heldout_loss": round(mean_loss(  # the adapter it continues
        model, heldout, tokenizer.pad_token_id, config.batch_size, device, adapter=True), 4)}
    steps_per_epoch = math.ceil(len(train) / config.batch_size)
    total = steps_per_epoch * config.epochs
    optimizer, schedule = _optimizer(model, config.learning_rate, total)
    run = _Run(config, model, optimizer, schedule, device, tokenizer.pad_token_id, train, steps_per_epoch, total)
    checkpoints = config.output / CHECKPOINTS
    start, losses = load_last_checkpoint(checkpoints, run_key, model, optimizer, schedule) if resume else (0, [])
    if not resume and checkpoints.exists():
        shutil.rmtree(checkpoints)

    model.train()
    step = start
    while step < total:
        losses.append(_step(run, step))
        step += 1
        if progress is not None:
            progress(TrainingProgress(step, total, (step - 1) // steps_per_epoch + 1, losses[-1],
                                      schedule.get_last_lr()[0], time.monotonic() - started))
        stopping = stop is not None and stop.is_set()
        if step < total and (step % config.save_every == 0 or stopping):
            save_checkpoint(checkpoints, step, run_key, model, optimizer, schedule, losses)
        if stopping and step < total:
            return TrainingResult(config.output, False, step, total, start, time.monotonic() - started,
                                  report=report, losses=tuple(losses))

    heldout_loss = mean_loss(model, heldout, tokenizer.pad_token_id, config.batch_size, device, adapter=True)
    train_loss = sum(losses[-steps_per_epoch:]) / len(losses[-steps_per_epoch:])
    seconds = time.monotonic() - started
    manifest = _save(config, model, report, {
        "train_loss": round(train_loss, 4), "heldout_loss": round(heldout_loss, 4),
        "base_heldout_loss": round(base_heldout, 4), "steps": float(total), "epochs": float(config.epochs),
        "train_examples": float(len(train)), "heldout_examples": float(len(heldout)),
        "train_seconds": round(seconds, 1), **before})
    shutil.rmtree(checkpoints, ignore_errors=True)
    return TrainingResult(config.output, True, total, total, start, seconds, train_loss, heldout_loss, base_heldout,
                          manifest, report, tuple(losses))


def _step(run: _Run, step: int) -> float:
    """One optimisation step (0-based ``step``); its loss. The batch and dropout depend on the step alone."""
    import torch

    epoch, offset = divmod(step, run.steps_per_epoch)
    size = run.config.batch_size
    batch_ids = epoch_order(len(run.train), run.config.seed, epoch)[offset * size:(offset + 1) * size]
    torch.manual_seed(run.config.seed * 1_000_003 + step)  # dropout: the same whether resumed or not
    value = loss(run.model, [run.train[i] for i in batch_ids], run.pad_id, run.device)
    value.backward()
    torch.nn.utils.clip_grad_norm_([p for p in run.model.parameters() if p.requires_grad], 1.0)
    run.optimizer.step()
    run.schedule.step()
    run.optimizer.zero_grad(set_to_none=True)
    return float(value.detach())


# -- set-up ------------------------------------------------------------------------------------------


def _quiet() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def _with_start_shape(config: TrainingConfig) -> TrainingConfig:
    """With ``start_from``: the rank, alpha and target modules are the starting adapter's (the manifest says so)."""
    if config.start_from is None:
        return config
    try:
        raw = json.loads((Path(config.start_from) / "adapter_config.json").read_text())
        return replace(config, rank=int(raw["r"]), alpha=int(raw["lora_alpha"]),
                       target_modules=tuple(sorted(raw["target_modules"])))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise TrainingError(f"cannot start from {config.start_from}: its adapter_config.json is not a LoRA "
                            f"config ({exc!r}); pass a folder `citeline adapter train` wrote") from exc


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
    if config.virtual_tokens is not None and not 1 <= config.virtual_tokens <= MAX_VIRTUAL_TOKENS:
        raise TrainingError(f"--virtual-tokens must be from 1 to {MAX_VIRTUAL_TOKENS} (got {config.virtual_tokens})")


def _tokenizer_and_data(config: TrainingConfig) -> tuple[Any, DataReport]:
    """The base model's tokenizer (it must have a chat template) and the checked data (no problems)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(config.base_model, local_files_only=True)
    if not tokenizer.chat_template:
        raise TrainingError(f"the tokenizer in {config.base_model} has no chat template: use an instruct model")
    report = check_data(config.data, count_tokens=chat_token_counter(tokenizer), max_tokens=config.max_tokens,
                        heldout=config.heldout, seed=config.seed)
    if not report.ok:
        raise TrainingError(f"{config.data} has {len(report.problems)} problem(s); fix them and train again "
                            f"(`citeline adapter check-data {config.data}` lists them all):\n{report.summary()}")
    return tokenizer, report


def _load_model(config: TrainingConfig) -> tuple[Any, torch.device]:
    """The base model with a fresh LoRA, or with ``config.start_from``'s adapter, trainable."""
    import torch
    from peft import LoraConfig, PeftModel, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM

    if config.start_from is not None and (problems := preflight(config.start_from, base_model_dir=Path(
            config.base_model), max_rank=256)):
        raise TrainingError(f"cannot start from {config.start_from}: " + "; ".join(p.message for p in problems))
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
        base.to(device)  # type: ignore[arg-type]  # transformers types .to() for its own wrapper
    if config.start_from is not None:
        return PeftModel.from_pretrained(base, str(config.start_from), is_trainable=True), device
    torch.manual_seed(config.seed)  # LoRA A's (or a random soft prompt's) initialisation
    if config.virtual_tokens is not None:  # a soft prompt: the same loop trains its embeddings only
        soft = prompt_tuning_config(config.base_model, virtual_tokens=config.virtual_tokens,
                                    init_text=config.init_text)
        return get_peft_model(base, soft), device
    lora = LoraConfig(r=config.rank, lora_alpha=config.alpha, lora_dropout=config.dropout,
                      target_modules=list(config.target_modules), task_type="CAUSAL_LM", bias="none")
    return get_peft_model(base, lora), device


def _optimizer(model: Any, learning_rate: float, total: int) -> tuple[Any, Any]:
    """AdamW on the adapter's parameters, with a linear warm-up (5% of the steps) and linear decay to 0."""
    import torch

    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=learning_rate,
                                  weight_decay=0.0)
    warmup = max(1, total // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min((s + 1) / warmup, max(0.0, (total - s) / max(1, total - warmup))))
    return optimizer, schedule


# -- output ------------------------------------------------------------------------------------------


def _save(config: TrainingConfig, model: Any, report: DataReport, metrics: dict[str, float]) -> AdapterManifest:
    output = Path(config.output)
    output.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output)
    (output / "README.md").unlink(missing_ok=True)  # peft's model-card stub says nothing true about this adapter
    base = Path(config.base_model)
    soft = config.virtual_tokens is not None  # a soft prompt has no rank and no target modules: 0 and ()
    manifest = AdapterManifest(base_model=base.name, base_fingerprint=base_model_fingerprint(base),
                               rank=0 if soft else config.rank,
                               target_modules=() if soft else tuple(config.target_modules), team=config.team,
                               data_hash=report.data_hash, metrics=metrics, kind=SOFT_PROMPT if soft else "lora",
                               virtual_tokens=config.virtual_tokens)
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
