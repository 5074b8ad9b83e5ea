"""A tiny Llama with SmolLM2's tokenizer and chat template: random weights, trains in seconds on any device."""

from __future__ import annotations

import shutil
from pathlib import Path

# a 2-layer model: big enough for every Llama projection LoRA targets, small enough to train in seconds on a CPU
TINY_LLAMA = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
              "num_key_value_heads": 1, "head_dim": 16}


def build_tiny_llama(smollm2_dir: Path, folder: Path) -> Path:
    """Write a tiny random Llama into ``folder`` with ``smollm2_dir``'s config (shrunk) and tokenizer files."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(smollm2_dir)
    for key, value in TINY_LLAMA.items():
        setattr(config, key, value)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    for file in smollm2_dir.iterdir():
        if file.name.startswith(("tokenizer", "special_tokens", "chat_template", "vocab", "merges")):
            shutil.copy(file, folder / file.name)
    return folder
