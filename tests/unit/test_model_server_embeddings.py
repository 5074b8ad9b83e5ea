"""``citeline model-server``'s /v1/embeddings in OpenAI's shape, over a small deterministic embedder (the real
sentence-transformers one behind a real server: tests/e2e/test_remote_embedding.py)."""

from __future__ import annotations

import base64
from collections.abc import Sequence

import numpy as np
import pytest
from fastapi.testclient import TestClient

from citeline.generation.extractive import ExtractiveBackend
from citeline.serving.model_server import create_model_app

pytestmark = pytest.mark.unit


class Letters:
    """Counts of a, b, c, d per text, normalised: enough to tell rows apart."""

    name = "test-letters:letters-4"
    dimension = 4

    def __init__(self) -> None:
        self.built = 0

    def embed_documents(self, texts: Sequence[str]) -> np.ndarray:
        rows = np.asarray([[t.count(c) + 0.5 for c in "abcd"] for t in texts], dtype=np.float32)
        return rows / np.linalg.norm(rows, axis=1, keepdims=True)

    def embed_query(self, text: str) -> np.ndarray:
        return self.embed_documents([text])[0]

    def tokenize(self, text: str) -> list[str]:
        return text.split()


@pytest.fixture
def served():
    embedder = Letters()

    def build() -> Letters:
        embedder.built += 1
        return embedder

    backend = ExtractiveBackend(ExtractiveBackend.Config())
    with TestClient(create_model_app(backend, embedder=build)) as client:
        yield client, embedder


def test_floats_in_openais_shape_built_once(served):
    client, embedder = served
    for _ in range(2):
        r = client.post("/v1/embeddings", json={"model": "letters-4", "input": ["aab", "dd c"]})
        assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "list" and body["model"] == "letters-4"
    assert [d["index"] for d in body["data"]] == [0, 1] and body["data"][0]["object"] == "embedding"
    assert np.allclose(body["data"][1]["embedding"], embedder.embed_documents(["dd c"])[0], atol=1e-6)
    assert body["usage"] == {"prompt_tokens": 3, "total_tokens": 3}
    assert embedder.built == 1


def test_base64_and_a_single_string(served):
    client, embedder = served
    r = client.post("/v1/embeddings", json={"model": "letters-4", "input": "abc", "encoding_format": "base64"})
    vector = np.frombuffer(base64.b64decode(r.json()["data"][0]["embedding"]), dtype="<f4")
    assert np.allclose(vector, embedder.embed_documents(["abc"])[0], atol=1e-6)


def test_unknown_model_and_other_dimensions_are_refused(served):
    client, _ = served
    r = client.post("/v1/embeddings", json={"model": "nope", "input": ["a"]})
    assert r.status_code == 404 and "letters-4" in r.json()["error"]["message"]
    r = client.post("/v1/embeddings", json={"model": "letters-4", "input": ["a"], "dimensions": 8})
    assert r.status_code == 400


def test_no_embedder_no_route():
    with TestClient(create_model_app(ExtractiveBackend(ExtractiveBackend.Config()))) as client:
        assert client.post("/v1/embeddings", json={"model": "m", "input": ["a"]}).status_code == 404
