"""The embedded backend's transformers engine: one decoding loop over a Hugging Face model, and stop handling.

Generation
    One hand-written decoding loop (prefill, then one token at a time over the KV cache; greedy when
    ``temperature == 0``, sampling otherwise) feeds both ``stream`` and ``generate`` of
    :class:`~citeline.generation.local.EmbeddedBackend`; ``generate`` joins the stream's deltas, so the two
    always agree. Text is detokenized incrementally (a moving window, as vLLM does) and a delta is held back
    while it ends in an incomplete UTF-8 character. A stream the client abandons stops at once (closing the
    generator ends the loop and frees the model). The repetition penalty (CTRL-style) applies to the
    answer's own tokens only: quoting the evidence is fine.

Stop sequences (both engines)
    :func:`until_stop` ends the answer before the first stop string would appear: text that could be the
    start of a stop string is held back until it is clear it is not.

:class:`TransformersModel` is not thread-safe by itself: the backend's lock serialises generations and
adapter changes; only the tokenizer has its own lock (the Rust tokenizer is not safe to share).
"""

from __future__ import annotations

import inspect
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from citeline.errors import GenerationError
from citeline.generation.llamacpp import LlamaStats as DecodeStats
from citeline.generation.local.conversion import quiet_transformers

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = ["DecodeStats", "TransformersModel", "until_stop"]


class TransformersModel:
    """A causal LM from a Hugging Face folder, its tokenizer, and the decoding loop."""

    def __init__(self, folder: Path, *, device: str, context_tokens: int) -> None:
        started = time.monotonic()
        tokenizer, model = _load_model(folder, device)
        self.load_s = time.monotonic() - started
        import torch

        self.folder = folder
        # (in, out) features of every linear layer, by module path: what an adapter's shapes are checked against
        self.linear_shapes = {n: (m.in_features, m.out_features) for n, m in model.named_modules()
                              if isinstance(m, torch.nn.Linear)}
        self.max_positions = int(getattr(model.config, "max_position_embeddings", 0) or context_tokens)
        embedding: Any = model.get_input_embeddings().weight  # a soft prompt must match its width, device and dtype
        self.hidden_size: int = int(embedding.shape[1])
        self.embedding_device: torch.device = embedding.device
        self.embedding_dtype: torch.dtype = embedding.dtype
        self._eos_ids = _eos_ids(model, tokenizer)
        self._logits_kw = ({"logits_to_keep": 1}
                           if "logits_to_keep" in inspect.signature(model.forward).parameters else {})
        self._tokenizer = tokenizer
        self._tok_lock = threading.Lock()  # the Rust tokenizer is not safe to share between threads
        self.model: PreTrainedModel | None = model  # replaced by adapter hosting (peft wraps it in place)

    def chat_ids(self, messages: Sequence[dict[str, str]]) -> list[int]:
        """The prompt for ``messages``: the tokenizer's chat template with the generation prompt."""
        with self._tok_lock:
            encoded: Any = self._tokenizer.apply_chat_template(list(messages), add_generation_prompt=True,
                                                          tokenize=True, return_dict=True)
        return list(encoded["input_ids"])

    def count_tokens(self, text: str) -> int:
        with self._tok_lock:
            return len(self._tokenizer.encode(text, add_special_tokens=False))

    def decode(self, prompt_ids: list[int], stats: DecodeStats, *, max_tokens: int, temperature: float,
               repetition_penalty: float, soft_prompt: torch.Tensor | None = None) -> Iterator[str]:
        """The decoding loop with incremental detokenization (the window of vLLM's detokenizer).

        ``soft_prompt``: a soft prompt's embeddings ``[n, hidden]``, put before the prompt's at prefill only (the
        KV cache holds them for every later step)."""
        stats.prompt_tokens = len(prompt_ids)
        generated: list[int] = []
        prefix_offset = read_offset = 0
        next_input, cache = prompt_ids, None
        for _ in range(max_tokens):
            token, cache = self._step(next_input, cache, temperature, repetition_penalty, generated,
                                      soft_prompt if cache is None else None)
            stats.completion_tokens += 1
            if token in self._eos_ids:
                stats.finish_reason = "stop"
                break
            generated.append(token)
            next_input = [token]
            prefix = self._detokenize(generated[prefix_offset:read_offset])
            text = self._detokenize(generated[prefix_offset:])
            if len(text) > len(prefix) and not text.endswith("\ufffd"):
                prefix_offset, read_offset = read_offset, len(generated)
                yield text[len(prefix):]
        rest = self._detokenize(generated[prefix_offset:])  # what an unfinished character held back
        prefix = self._detokenize(generated[prefix_offset:read_offset])
        if len(rest) > len(prefix):
            yield rest[len(prefix):]

    def _step(self, input_ids: list[int], cache: Any, temperature: float, penalty: float,
              generated: list[int], prefix: torch.Tensor | None = None) -> tuple[int, Any]:
        import torch

        if self.model is None:
            raise GenerationError("embedded: the backend was closed: create a new one")
        try:
            with torch.inference_mode():
                ids = torch.tensor([input_ids], device=self.model.device)
                if prefix is None:
                    out = self.model(input_ids=ids, past_key_values=cache, use_cache=True, **self._logits_kw)
                else:  # the soft prompt's virtual tokens, then the prompt's embeddings
                    embeds = torch.cat([prefix[None], self.model.get_input_embeddings()(ids)], dim=1)
                    out = self.model(inputs_embeds=embeds, past_key_values=cache, use_cache=True, **self._logits_kw)
                logits = out.logits[0, -1].float()
                if generated and penalty != 1.0:  # CTRL-style, on the answer's own tokens only: quoting
                    seen = torch.tensor(sorted(set(generated)), device=logits.device)  # evidence is fine
                    picked = logits[seen]
                    logits[seen] = torch.where(picked > 0, picked / penalty, picked * penalty)
                if temperature <= 0:
                    token = int(torch.argmax(logits))
                else:
                    token = int(torch.multinomial(torch.softmax(logits / temperature, dim=-1), 1))
        except RuntimeError as exc:  # out of memory, a broken adapter, ...
            raise GenerationError(f"embedded: generation failed: {exc}") from exc
        return token, out.past_key_values

    def _detokenize(self, ids: list[int]) -> str:
        if not ids:
            return ""
        with self._tok_lock:
            return str(self._tokenizer.decode(ids, skip_special_tokens=True))


def until_stop(pieces: Iterator[str], stops: tuple[str, ...], stats: DecodeStats) -> Iterator[str]:
    """``pieces`` up to the first stop string (excluded); text that may begin one is held back meanwhile."""
    if not stops:
        yield from pieces
        return
    pending = ""
    try:
        for piece in pieces:
            pending += piece
            found = [i for i in (pending.find(stop) for stop in stops) if i >= 0]
            if found:
                if min(found):
                    yield pending[:min(found)]
                stats.finish_reason = "stop"
                return
            keep = max((n for stop in stops for n in range(min(len(stop) - 1, len(pending)), 0, -1)
                        if pending.endswith(stop[:n])), default=0)
            if len(pending) > keep:
                yield pending[:len(pending) - keep]
                pending = pending[len(pending) - keep:]
        if pending:
            yield pending
    finally:
        close = getattr(pieces, "close", None)
        if close is not None:
            close()  # stops the engine at once when a stop string ended the answer


def _load_model(path: Path, device: str) -> tuple[PreTrainedTokenizerBase, PreTrainedModel]:
    quiet_transformers()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(
            path, local_files_only=True, dtype=torch.float32 if device == "cpu" else "auto")
    except (OSError, ValueError) as exc:
        raise GenerationError(f"embedded: cannot load the model in {path}: {exc}; fix generation.options.model "
                              "or remove the folder to convert the built-in model again") from exc
    if not tokenizer.chat_template:
        raise GenerationError(f"embedded: the tokenizer in {path} has no chat template: use an instruct model")
    model.to(device)  # type: ignore[arg-type]  # transformers' decorator hides self from the checker
    model.eval()
    return tokenizer, model


def _eos_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> frozenset[int]:
    ids: set[int] = set()
    configured = getattr(model.generation_config, "eos_token_id", None)
    if isinstance(configured, int):
        ids.add(configured)
    elif configured:
        ids.update(int(i) for i in configured)
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    return frozenset(ids)
