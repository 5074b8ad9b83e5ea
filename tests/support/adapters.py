"""Small real LoRA adapters for tests: peft folders on the real SmolLM2 base, with random deltas."""

from __future__ import annotations

import json
from pathlib import Path

__all__ = ["make_adapter", "with_metrics"]


def make_adapter(model_dir: Path, dest: Path, *, rank: int = 8, seed: int = 0) -> Path:
    """A peft LoRA adapter on q_proj, v_proj whose random lora_B changes the first tokens."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True)
    torch.manual_seed(seed)
    tuned = get_peft_model(base, LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=["q_proj", "v_proj"],
                                            task_type="CAUSAL_LM"))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in tuned.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.4)
    tuned.save_pretrained(dest)
    return dest.resolve()  # vLLM wants an absolute lora_path


def with_metrics(adapter_dir: Path, base_model_dir: Path, **metrics: float) -> Path:
    """Write a citeline manifest with these evaluation metrics (what `citeline adapter eval` records)."""
    from citeline.lora.manifest import AdapterManifest, base_model_fingerprint

    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    AdapterManifest(base_model=base_model_dir.name, base_fingerprint=base_model_fingerprint(base_model_dir),
                    rank=int(config["r"]), target_modules=tuple(config["target_modules"]),
                    metrics=metrics).write(adapter_dir)
    return adapter_dir
