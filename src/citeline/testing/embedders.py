"""A contract test suite every embedder runs (built-in or third-party).

Inherit :class:`EmbedderContract` in a pytest test class and provide an ``embedder`` fixture (a ready
embedder, built as ``cls(config, home=...)``; a class- or module-scoped fixture keeps a real model loaded
once)::

    from citeline.testing.embedders import EmbedderContract

    class TestMyEmbedder(EmbedderContract):
        @pytest.fixture(scope="class")
        def embedder(self):
            return MyEmbedder(MyEmbedder.Config(dimension=64), home=Path("/tmp"))

It checks the promises of :mod:`citeline.contracts.embedder`. Nothing here imports pytest.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from citeline.contracts.embedder import Embedder

__all__ = ["TEXTS", "EmbedderContract", "assert_unit_rows"]

TEXTS = (
    "Run acme-deploy rollback fleet to redeploy the previous release.",
    "Opened items can be returned within 30 days for a refund.",
    "Der Wasserkocher kostet 30 EUR.",  # not English
    "x",
)
TOLERANCE = 1e-3  # unit norm, and the same text in another batch (padding changes the last bits)


def assert_unit_rows(vectors: np.ndarray, dimension: int) -> None:
    assert isinstance(vectors, np.ndarray), f"vectors are a numpy array, not {type(vectors).__name__}"
    assert vectors.dtype == np.float32, f"vectors are float32, not {vectors.dtype}"
    assert vectors.shape[-1] == dimension, f"vectors have `dimension` ({dimension}) floats, not {vectors.shape[-1]}"
    assert np.all(np.isfinite(vectors)), "vectors are finite"
    norms = np.linalg.norm(vectors.reshape(-1, dimension), axis=1)
    assert np.allclose(norms, 1.0, atol=TOLERANCE), f"vectors have unit length (norms {norms})"


class EmbedderContract:
    """Checks the promises of :mod:`citeline.contracts.embedder`. Needs an ``embedder`` fixture."""

    def test_is_an_embedder(self, embedder: Any) -> None:
        assert isinstance(embedder, Embedder), "the class implements citeline.contracts.embedder.Embedder"
        assert isinstance(embedder.name, str) and embedder.name, "name is a non-empty string"
        assert isinstance(embedder.dimension, int) and embedder.dimension > 0, "dimension is a positive int"

    def test_documents_give_one_unit_row_each(self, embedder: Any) -> None:
        vectors = embedder.embed_documents(list(TEXTS))
        assert vectors.shape == (len(TEXTS), embedder.dimension), f"shape (len(texts), dimension), not {vectors.shape}"
        assert_unit_rows(vectors, embedder.dimension)

    def test_no_documents_give_an_empty_matrix(self, embedder: Any) -> None:
        vectors = embedder.embed_documents([])
        assert isinstance(vectors, np.ndarray) and vectors.shape == (0, embedder.dimension), \
            f"embed_documents([]) has shape (0, dimension), not {getattr(vectors, 'shape', vectors)}"

    def test_query_gives_one_unit_vector(self, embedder: Any) -> None:
        vector = embedder.embed_query("how do I roll back a bad deploy")
        assert vector.shape == (embedder.dimension,), f"embed_query gives shape (dimension,), not {vector.shape}"
        assert_unit_rows(vector, embedder.dimension)

    def test_deterministic_and_batch_independent(self, embedder: Any) -> None:
        batch = embedder.embed_documents(list(TEXTS))
        alone = np.vstack([embedder.embed_documents([t]) for t in TEXTS])
        assert np.allclose(batch, alone, atol=TOLERANCE), "a text's vector does not depend on its batch"
        question = "how do I roll back a bad deploy"
        assert np.allclose(embedder.embed_query(question), embedder.embed_query(question), atol=1e-6), \
            "the same question gives the same vector"

    def test_similar_texts_are_closer(self, embedder: Any) -> None:
        a, b, c = embedder.embed_documents([TEXTS[0], TEXTS[0] + " Deploys happen on Mondays.", TEXTS[1]])
        assert float(a @ b) > float(a @ c), "a text is closer to a longer copy of itself than to another text"

    def test_tokenize(self, embedder: Any) -> None:
        tokens = embedder.tokenize(TEXTS[0])
        assert isinstance(tokens, list) and tokens and all(isinstance(t, str) for t in tokens), \
            "tokenize gives a non-empty list of strings for a sentence"
        assert embedder.tokenize("") == [], "tokenize('') is []"
        assert len(embedder.tokenize(TEXTS[0] + " " + TEXTS[1])) > len(tokens), "more text, more tokens"
