"""Encoders: the embedder's own model run by a faster engine, for questions and for documents.

Every engine computes the same model (the same weights, tokenizer, pooling and normalisation), so vectors from any
two of them agree to a cosine of 0.985 or more and one index may hold vectors from several: the engine is not part
of the embedder's ``name``, and changing it re-embeds nothing. ``embedding.options.query_encoder`` picks the engine
for questions (short, one at a time), ``embedding.options.document_encoder`` the one for chunks (batches):

``onnx-int8``
    The transformer exported once to ONNX and its weights quantized to int8 per output channel with
    onnxruntime, kept in ``embedding.options.cache`` (default ``$XDG_CACHE_HOME/citeline``, else
    ``~/.cache/citeline``) under a key of the model files and library versions. The whole forward pass runs
    in C++ with the GIL released once per batch; torch releases and re-takes it for each of ~300 operators,
    which is what makes question encoding slow inside a busy multi-threaded server. Needs ``onnxruntime``
    and ``onnx`` and a model made of Transformer → Pooling (mean or CLS) → optional Normalize.
``torch-int8``
    ``torch.ao.quantization.quantize_dynamic`` on the linear layers (per channel).
``onnx-float`` (documents only)
    The same export without quantization.
``float``
    The model itself (sentence-transformers' ``encode``).
``auto`` (default)
    Questions: ``onnx-int8`` where possible, else ``torch-int8`` on CPU (the reason is logged), else ``float``.
    Documents: ``onnx-int8`` where possible on CPU, else ``float``.

An ONNX document encoder runs one chunk per pass, ``document_threads`` passes at once on one single-threaded
session: each vector is then a function of its text alone (int8 activations are quantized per pass, so other rows
in a batch would move it), nothing is padded, and independent passes scale better on few cores than one pass split
across threads (measured: 1 chunk per pass 45 chunks per CPU-second, batches of 8 in order of length 32).
Speed and quality on SciFact for each engine, and the refusal curve: ``docs/benchmarks.md``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from citeline.errors import ConfigError
from citeline.filelock import file_lock

__all__ = ["QueryEncoder", "build_document_encoder", "build_query_encoder", "default_cache_dir"]

log = logging.getLogger(__name__)

_FORMAT = "v1"  # bump when the exported graph changes, so old cache entries are not reused


class QueryEncoder(Protocol):
    engine: str

    def __call__(self, texts: list[str]) -> np.ndarray:
        """Unit-length float32 vectors, one row per text."""
        ...


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "citeline"


class _Unavailable(Exception):
    """This engine cannot run here; the message says why (used by ``auto`` to fall back)."""


class TorchEncoder:
    """The sentence-transformers modules called directly (``encode()`` re-walks every module per call)."""

    def __init__(self, model: Any, engine: str) -> None:
        self.model = model
        self.engine = engine

    def __call__(self, texts: list[str]) -> np.ndarray:
        import torch

        with torch.inference_mode():
            out = self.model.forward(self.model.preprocess(texts))["sentence_embedding"]
            return torch.nn.functional.normalize(out.float(), dim=1).numpy().astype(np.float32, copy=False)


class OnnxEncoder:
    """The transformer exported to ONNX (int8 weights unless ``quantized`` is false), pooled and normalised here."""

    def __init__(self, model: Any, model_dir: Path, cache_dir: Path, threads: int, *, quantized: bool = True) -> None:
        self.engine = "onnx-int8" if quantized else "onnx-float"
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise _Unavailable("onnxruntime is not installed (pip install onnxruntime onnx)") from exc
        modules = list(model)
        kinds = [type(m).__name__ for m in modules]
        if kinds[:2] != ["Transformer", "Pooling"] or kinds[2:] not in ([], ["Normalize"]):
            raise _Unavailable(f"the model's modules are {kinds}, not Transformer → Pooling (→ Normalize)")
        self.pooling = getattr(modules[1], "pooling_mode", None)
        if self.pooling not in ("mean", "cls"):
            raise _Unavailable(f"pooling mode {self.pooling!r} (only mean and cls are exported)")
        self.tokenizer = model.tokenizer
        self.max_length = int(model.max_seq_length or 256)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # errors only
        # idle threads sleep instead of spinning: on shared cores spinning burned a third more CPU per chunk
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        names = list(self.tokenizer.model_input_names)
        for attempt in (1, 2):  # a cached file that does not load (damaged, foreign) is exported again, once
            path = _ensure_exported(modules[0].auto_model, names, model_dir, cache_dir, quantized=quantized)
            try:
                self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
                break
            except Exception as exc:  # onnxruntime raises its own exception types for unreadable models
                if attempt == 2:
                    raise _Unavailable(f"onnxruntime cannot load {path} ({exc})") from exc
                log.warning("%s encoder: %s does not load (%s); exporting it again", self.engine, path, exc)
                path.unlink(missing_ok=True)
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.path = path

    def __call__(self, texts: list[str]) -> np.ndarray:
        x = self.tokenizer(texts, return_tensors="np", padding=True, truncation=True, max_length=self.max_length)
        hidden = self.session.run(None, {k: x[k].astype(np.int64) for k in self.inputs})[0]
        if self.pooling == "cls":
            v = hidden[:, 0]
        else:  # mean over real tokens, as sentence-transformers' Pooling does
            mask = x["attention_mask"][..., None].astype(np.float32)
            v = (hidden * mask).sum(axis=1) / np.clip(mask.sum(axis=1), 1e-9, None)
        return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


def build_query_encoder(model: Any, model_dir: Path, *, engine: str, device: str, cache_dir: Path | None,
                        threads: int) -> QueryEncoder:
    """The question encoder ``engine`` asks for (see the module docstring); ``model`` is the float model."""
    cache_dir = cache_dir or default_cache_dir()
    if engine in ("auto", "onnx-int8") and device == "cpu":
        try:
            return OnnxEncoder(model, model_dir, cache_dir, threads)
        except _Unavailable as exc:
            if engine == "onnx-int8":
                raise ConfigError(f"embedding.options.query_encoder = 'onnx-int8' cannot run: {exc}; set it to "
                                  "'auto' or 'torch-int8'") from exc
            log.info("question encoder: onnx-int8 not used (%s); using torch-int8", exc)
    elif engine == "onnx-int8":
        raise ConfigError("embedding.options.query_encoder = 'onnx-int8' runs on CPU only "
                          f"(embedding.options.device is {device!r})")
    if engine in ("auto", "torch-int8") and device == "cpu":
        quantized = _torch_int8(model)
        if quantized is not None:
            return TorchEncoder(quantized, "torch-int8")
        if engine == "torch-int8":
            raise ConfigError("embedding.options.query_encoder = 'torch-int8' needs torch.ao.quantization, which "
                              "this torch lacks: use 'auto' or 'float'")
    elif engine == "torch-int8":
        raise ConfigError("embedding.options.query_encoder = 'torch-int8' runs on CPU only "
                          f"(embedding.options.device is {device!r})")
    return TorchEncoder(model, "float")


def build_document_encoder(model: Any, model_dir: Path, *, engine: str, device: str, cache_dir: Path | None,
                           threads: int) -> OnnxEncoder | None:
    """The ONNX engine ``embedding.options.document_encoder`` asks for, or None for the model's own ``encode``."""
    if engine == "float":
        return None
    if device != "cpu":
        if engine == "auto":
            return None
        raise ConfigError(f"embedding.options.document_encoder = {engine!r} runs on CPU only (embedding.options.device "
                          f"is {device!r}): set it to 'float' or 'auto'")
    try:
        return OnnxEncoder(model, model_dir, cache_dir or default_cache_dir(), threads,
                           quantized=engine != "onnx-float")
    except _Unavailable as exc:
        if engine != "auto":
            raise ConfigError(f"embedding.options.document_encoder = {engine!r} cannot run: {exc}; set it to 'auto' "
                              "or 'float'") from exc
        log.info("document encoder: onnx-int8 not used (%s); using the float model", exc)
        return None


def _torch_int8(model: Any) -> Any | None:
    import torch

    try:
        from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic
    except ImportError:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the deprecation notice points at torchao; behaviour is unchanged
        return quantize_dynamic(model, {torch.nn.Linear: per_channel_dynamic_qconfig})


def _cache_key(model_dir: Path) -> str:
    import onnxruntime
    import torch

    h = hashlib.sha256(f"{_FORMAT}|torch {torch.__version__}|onnxruntime {onnxruntime.__version__}".encode())
    for f in sorted(p for p in model_dir.rglob("*") if p.is_file()):
        st = f.stat()
        h.update(f"|{f.relative_to(model_dir)}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def _ensure_exported(transformer: Any, input_names: list[str], model_dir: Path, cache_dir: Path, *,
                     quantized: bool = True) -> Path:
    """``<cache>/query-encoders/<model>-<key>.int8.onnx`` (``.float.onnx`` unquantized), made on first use."""
    folder = cache_dir / "query-encoders"  # the folder's name predates document encoders; kept so caches stay valid
    target = folder / f"{model_dir.name}-{_cache_key(model_dir)}.{'int8' if quantized else 'float'}.onnx"
    if target.is_file():
        return target
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _Unavailable(f"cannot create the cache folder {folder} ({exc}); set embedding.options.cache") from exc
    with file_lock(folder / ".export.lock", "exporting the ONNX encoder"):
        if target.is_file():  # another process finished while we waited
            return target
        work = Path(tempfile.mkdtemp(prefix=".export-", dir=folder))
        try:
            _export(transformer, input_names, work / "model.onnx")
            if quantized:
                _quantize(work / "model.onnx", work / "model.int8.onnx")
            os.replace(work / ("model.int8.onnx" if quantized else "model.onnx"), target)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    log.info("ONNX encoder exported to %s", target)
    return target


def _export(transformer: Any, input_names: list[str], out: Path) -> None:
    import torch

    try:
        import onnx  # noqa: F401  (the exporter and the quantizer need it)
    except ImportError as exc:
        raise _Unavailable("the onnx package is not installed (pip install onnx)") from exc

    class _Hidden(torch.nn.Module):  # positional inputs in the tokenizer's order → last hidden state
        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
            return self.inner(**dict(zip(input_names, tensors, strict=True))).last_hidden_state

    example = {name: torch.ones((2, 8), dtype=torch.long) for name in input_names}
    if "token_type_ids" in example:
        example["token_type_ids"] = torch.zeros((2, 8), dtype=torch.long)
    example["attention_mask"][1, 5:] = 0  # padded second row, so masking is traced as data, not a constant
    axes = {name: {0: "batch", 1: "tokens"} for name in [*input_names, "last_hidden_state"]}
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # tracer warnings about Python values; the graph is checked below
            torch.onnx.export(_Hidden(transformer).eval(), tuple(example[n] for n in input_names), str(out),
                              input_names=input_names, output_names=["last_hidden_state"], dynamic_axes=axes,
                              opset_version=17, dynamo=False)
    except Exception as exc:  # an exporter that cannot handle this model: fall back, say why
        raise _Unavailable(f"ONNX export failed ({type(exc).__name__}: {exc})") from exc


def _quantize(src: Path, dst: Path) -> None:
    try:
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError as exc:
        raise _Unavailable(f"onnxruntime.quantization unavailable ({exc})") from exc
    try:
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=True)
    except Exception as exc:  # a graph the quantizer cannot handle: fall back, say why
        raise _Unavailable(f"int8 quantization failed ({type(exc).__name__}: {exc})") from exc
