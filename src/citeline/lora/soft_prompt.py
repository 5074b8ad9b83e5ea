"""Soft prompts (peft prompt tuning): the cheap rung between a prompt and a LoRA adapter.

A soft prompt is ``num_virtual_tokens`` learned input embeddings put before every prompt; the base model's
weights are untouched. A soft-prompt folder is a standard peft prompt-tuning folder (``adapter_config.json``
with ``peft_type`` ``PROMPT_TUNING`` + ``adapter_model.safetensors`` holding one tensor,
``prompt_embeddings``, of shape ``[num_virtual_tokens, hidden_size]``) and citeline's manifest (kind
``soft_prompt``, rank 0 and no target modules: it has neither).

Only the embedded backend serves soft prompts (it prepends the embeddings at prefill,
:mod:`citeline.generation.local.hosting`); **vLLM does not**: its runtime API loads LoRA adapters only, so
registering a soft prompt for a vLLM deployment is refused (:data:`VLLM_REFUSAL`) and
:class:`citeline.lora.rollout.ReplicaClient` never sends one.

:func:`citeline.lora.manifest.preflight` checks such a folder (it dispatches on ``peft_type``): the manifest's
kind and base fingerprint, then :func:`embedding_problems`, the check the embedded backend shares with it (config
and tensor shapes against the model's hidden size). Neither loads torch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from citeline.lora.config_fields import is_int
from citeline.lora.problems import ADAPTER_CONFIG, ADAPTER_WEIGHTS, AdapterProblem, Problem

__all__ = ["DEFAULT_INIT_TEXT", "DEFAULT_VIRTUAL_TOKENS", "MAX_VIRTUAL_TOKENS", "PROMPT_LEARNING_RATE",
           "PROMPT_TUNING", "SOFT_PROMPT", "SOFT_PROMPT_TENSOR", "VLLM_REFUSAL", "embedding_problems",
           "is_soft_prompt", "prompt_tuning_config"]

PROMPT_TUNING = "PROMPT_TUNING"  # peft_type of a soft prompt's adapter_config.json
SOFT_PROMPT = "soft_prompt"  # the manifest's kind
SOFT_PROMPT_TENSOR = "prompt_embeddings"  # the one tensor peft saves for prompt tuning
DEFAULT_VIRTUAL_TOKENS = 20
PROMPT_LEARNING_RATE = 3e-2  # prompt tuning wants a far higher rate than LoRA's 1e-3 (few parameters, one layer)
MAX_VIRTUAL_TOKENS = 512  # more is a long prompt in disguise (and eats the context): refused
DEFAULT_INIT_TEXT = ("Answer the customer's question from the evidence only, in the team's format: short bullet "
                     "points with citations like [1], then a line that starts with Next step:.")
VLLM_REFUSAL = ("vLLM does not serve soft prompts (prompt tuning): its runtime API loads LoRA adapters only. Serve "
                "this team from the embedded backend (generation.backend = \"embedded\", no adapters.replicas), or "
                "train a LoRA adapter instead (`citeline adapter train --method sft`)")
_RETRAIN = "train it again with `citeline adapter train --method prompt` on this base model"


def is_soft_prompt(config: Mapping[str, Any]) -> bool:
    """Whether an ``adapter_config.json`` (as a dict) describes a soft prompt."""
    return config.get("peft_type") == PROMPT_TUNING


def prompt_tuning_config(base_model: Path, *, virtual_tokens: int, init_text: str | None) -> Any:
    """peft's PromptTuningConfig: TEXT init from ``init_text`` (tokenized with the base's tokenizer), else RANDOM."""
    from peft import PromptTuningConfig, PromptTuningInit, TaskType

    if init_text:
        return PromptTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=virtual_tokens,
                                  prompt_tuning_init=PromptTuningInit.TEXT, prompt_tuning_init_text=init_text,
                                  tokenizer_name_or_path=str(base_model),
                                  tokenizer_kwargs={"local_files_only": True})
    return PromptTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=virtual_tokens,
                              prompt_tuning_init=PromptTuningInit.RANDOM)


def embedding_problems(config: Mapping[str, Any], shapes: Mapping[str, Sequence[int]],
                       hidden_size: int) -> list[AdapterProblem]:
    """A prompt-tuning config and its weights' shapes against a base model of ``hidden_size``."""
    tokens, dim = config.get("num_virtual_tokens"), config.get("token_dim")
    subs = config.get("num_transformer_submodules") or 1
    if not isinstance(tokens, int) or not is_int(tokens) or tokens > MAX_VIRTUAL_TOKENS:
        return [AdapterProblem(Problem.BAD_CONFIG, f"{ADAPTER_CONFIG}: num_virtual_tokens is {tokens!r}; it must be "
                               f"an integer from 1 to {MAX_VIRTUAL_TOKENS}: {_RETRAIN}")]
    if subs != 1:
        return [AdapterProblem(Problem.BAD_CONFIG, f"{ADAPTER_CONFIG}: num_transformer_submodules is {subs!r}; a "
                               "decoder-only model's soft prompt has 1")]
    if dim is not None and dim != hidden_size:
        return [AdapterProblem(Problem.BASE_MISMATCH, f"the soft prompt's token_dim is {dim!r}, the base model's "
                               f"hidden size is {hidden_size}: it was trained for another base model; {_RETRAIN}")]
    want = [tokens, hidden_size]
    problems = [AdapterProblem(Problem.WEIGHTS_MISMATCH, f"unexpected tensor {key!r} in {ADAPTER_WEIGHTS} (a soft "
                               f"prompt holds only {SOFT_PROMPT_TENSOR!r})") for key in shapes
                if key != SOFT_PROMPT_TENSOR]
    shape = shapes.get(SOFT_PROMPT_TENSOR)
    if shape is None:
        problems.append(AdapterProblem(Problem.WEIGHTS_MISSING, f"{ADAPTER_WEIGHTS} has no {SOFT_PROMPT_TENSOR!r} "
                                       f"tensor: {_RETRAIN}"))
    elif list(shape) != want:
        problems.append(AdapterProblem(Problem.WEIGHTS_MISMATCH, f"{SOFT_PROMPT_TENSOR!r} has shape {list(shape)}, "
                                       f"the config and base model need {want} (num_virtual_tokens, hidden size)"))
    return problems
