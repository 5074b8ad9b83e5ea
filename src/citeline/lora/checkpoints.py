"""Training checkpoints: ``<output>/checkpoints/step-NNNNNN``, each with the adapter weights, the optimizer and
schedule state, the step, the losses so far and the run's key (what must match for it to be continued).

A checkpoint is written into a temporary folder and renamed into place; its ``state.json`` is written last,
so a folder without one is incomplete and ignored. The last two are kept.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from citeline.errors import TrainingError

__all__ = ["CHECKPOINTS", "complete_checkpoints", "load_last_checkpoint", "save_checkpoint"]

CHECKPOINTS = "checkpoints"  # the folder inside the training output
_STATE = "state.json"  # written last inside a checkpoint: its presence means the checkpoint is complete
_KEEP_CHECKPOINTS = 2


def save_checkpoint(folder: Path, step: int, run_key: dict[str, Any], model: Any, optimizer: Any, schedule: Any,
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
    for old in complete_checkpoints(folder)[:-_KEEP_CHECKPOINTS]:
        shutil.rmtree(old, ignore_errors=True)


def complete_checkpoints(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.glob("step-*") if (p / _STATE).is_file())


def load_last_checkpoint(folder: Path, run_key: dict[str, Any], model: Any, optimizer: Any,
            schedule: Any) -> tuple[int, list[float]]:
    """Load the last complete checkpoint into model, optimizer and schedule: (its step, its losses)."""
    found = complete_checkpoints(folder)
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
