"""The embedder contract: text → unit-length vectors.

An embedder is a class registered under the entry-point group ``citeline.embedders`` (the built-in
``sentence-transformers`` is registered in citeline's own ``pyproject.toml`` the same way). It is built
by :func:`citeline.plugins.create` as ``cls(config, home=home)``: ``config`` is the class's own pydantic
``Config`` validated from ``[embedding.options]`` (secrets there belong in ``SecretStr`` fields), ``home``
the citeline home folder (for caches and model files).

An embedder must guarantee:

- ``dimension``: the length of every vector it returns (the index's vector column is created with it);
- ``name``: recorded with the index; a different name means vectors that are not comparable;
- ``embed_documents(texts)`` returns a ``float32`` array of shape ``(len(texts), dimension)`` (an empty
  sequence gives shape ``(0, dimension)``), row ``i`` for ``texts[i]``, each row of unit L2 norm
  (similarity is the inner product);
- ``embed_query(text)`` returns one unit-length ``float32`` vector of shape ``(dimension,)``; a model that
  uses query/document prefixes applies them here and in ``embed_documents``. The returned array may be
  read-only (cached): callers never modify it;
- both are deterministic: the same text gives the same vector (to float tolerance), whatever else is in
  the batch;
- ``tokenize(text)`` returns the model's tokens (chunkers count chunk sizes with it); ``""`` gives ``[]``.

``citeline.testing.embedders.EmbedderContract`` checks these; built-ins and plugins run it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np

__all__ = ["Embedder"]


@runtime_checkable
class Embedder(Protocol):
    """What ingest and retrieval consume. See the module docstring for the full contract."""

    name: str
    dimension: int

    def embed_documents(self, texts: Sequence[str]) -> np.ndarray: ...

    def embed_query(self, text: str) -> np.ndarray: ...

    def tokenize(self, text: str) -> list[str]: ...
