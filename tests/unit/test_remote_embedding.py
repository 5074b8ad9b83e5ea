"""The ``openai`` embedder's client against an in-memory transport: batching, prefixes, retries, errors.

The real server (``citeline model-server``'s /v1/embeddings) is in tests/e2e/test_remote_embedding.py.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable

import numpy as np
import pytest

try:  # the httpx the openai package is built on (recent releases use the httpx2 fork)
    import httpx2 as httpx
except ImportError:  # pragma: no cover
    import httpx  # type: ignore[no-redef]

from citeline import plugins
from citeline.errors import EmbeddingError
from citeline.ingest.remote_embedding import OpenAIEmbedder

pytestmark = pytest.mark.unit

URL = "http://embed.test/v1"
KEY = "sk-very-secret-key-123"


def fake_vector(text: str, dim: int = 8) -> list[float]:
    """A deterministic, not normalised vector per text (so normalisation shows)."""
    rng = np.random.default_rng(abs(hash(text)) % 2**32)
    return (rng.normal(size=dim) * 3).tolist()


class Server:
    """An OpenAI-compatible /v1/embeddings in memory; ``script`` answers the first requests differently."""

    def __init__(self, script: list[httpx.Response] | None = None, dim: int = 8) -> None:
        self.requests: list[dict] = []
        self.headers: list[httpx.Headers] = []
        self.script = list(script or [])
        self.dim = dim

    def __call__(self, request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/v1/embeddings"
        body = json.loads(request.content)
        self.requests.append(body)
        self.headers.append(request.headers)
        if self.script:
            return self.script.pop(0)
        data = [{"object": "embedding", "index": i, "embedding": fake_vector(t, self.dim)}
                for i, t in enumerate(body["input"])]
        return httpx.Response(200, json={"object": "list", "model": body["model"], "data": data[::-1],
                                         "usage": {"prompt_tokens": 1, "total_tokens": 1}})


def make(server: Callable[[httpx.Request], httpx.Response], **options) -> OpenAIEmbedder:
    config = OpenAIEmbedder.Config(**{"base_url": URL, "model": "e5-small", **options})
    return OpenAIEmbedder(config, http_client=httpx.Client(transport=httpx.MockTransport(server)))


def test_registered_as_the_openai_embedder():
    assert plugins.load(plugins.EMBEDDERS, "openai") is OpenAIEmbedder
    embedder = plugins.create(plugins.EMBEDDERS, "openai", {"base_url": URL, "model": "m", "dimension": 8},
                              section="embedding.options", home=None)
    assert embedder.name == "openai:m" and embedder.dimension == 8


def test_batches_of_batch_size_in_order_with_unit_rows():
    server = Server()
    embedder = make(server, batch_size=3, dimension=8)
    texts = [f"text number {i}" for i in range(10)]
    vectors = embedder.embed_documents(texts)
    assert len(server.requests) == math.ceil(10 / 3)
    assert [len(r["input"]) for r in server.requests] == [3, 3, 3, 1]
    assert all(r["encoding_format"] == "float" and r["model"] == "e5-small" for r in server.requests)
    assert vectors.dtype == np.float32 and vectors.shape == (10, 8)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-6)
    expected = np.asarray(fake_vector(texts[7]), dtype=np.float32)
    assert np.allclose(vectors[7], expected / np.linalg.norm(expected), atol=1e-6)  # row i is texts[i]
    assert embedder.embed_documents([]).shape == (0, 8)


def test_prefixes_for_queries_and_documents():
    server = Server()
    embedder = make(server, dimension=8, query_prefix="query: ", document_prefix="passage: ")
    embedder.embed_documents(["a", "b"])
    vector = embedder.embed_query("how?")
    assert server.requests[0]["input"] == ["passage: a", "passage: b"]
    assert server.requests[1]["input"] == ["query: how?"]
    assert vector.shape == (8,) and abs(float(np.linalg.norm(vector)) - 1) < 1e-6


def test_dimension_is_probed_once_when_not_configured():
    server = Server(dim=5)
    embedder = make(server)
    assert embedder.dimension == 5 and embedder.dimension == 5
    assert len(server.requests) == 1


def test_429_then_200_is_retried_honouring_retry_after():
    server = Server([httpx.Response(429, headers={"Retry-After": "0"}, json={"error": {"message": "slow down"}}),
                     httpx.Response(503, headers={"Retry-After": "0"}, json={"error": {"message": "busy"}})])
    vectors = make(server, dimension=8, retries=2).embed_documents(["a"])
    assert len(server.requests) == 3 and vectors.shape == (1, 8)


def test_retries_exhausted_name_the_status_and_the_server():
    server = Server([httpx.Response(500, json={"error": {"message": "boom"}})] * 2)
    with pytest.raises(EmbeddingError, match=r"embed\.test.*HTTP 500.*boom"):
        make(server, dimension=8, retries=1).embed_documents(["a"])
    assert len(server.requests) == 2


def test_401_is_a_clear_error_without_the_key():
    server = Server([httpx.Response(401, json={"error": {"message": f"Incorrect API key provided: {KEY}"}})])
    with pytest.raises(EmbeddingError, match=r"http://embed\.test/v1 rejected the API key") as info:
        make(server, dimension=8, api_key=KEY).embed_query("q")
    assert server.headers[0]["authorization"] == f"Bearer {KEY}"
    assert KEY not in str(info.value) and "sk-" not in str(info.value)


def test_connection_failure_names_the_base_url():
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    with pytest.raises(EmbeddingError, match=r"cannot reach the embedding server at http://embed\.test/v1"):
        make(refuse, dimension=8, retries=0).embed_query("q")


@pytest.mark.parametrize("response", [
    httpx.Response(200, text="<html>not json</html>", headers={"content-type": "text/html"}),
    httpx.Response(200, json={"object": "list", "data": []}),
    httpx.Response(200, json={"unexpected": True}),
])
def test_a_reply_that_is_not_embeddings_is_a_clear_error(response):
    with pytest.raises(EmbeddingError, match=r"http://embed\.test/v1"):
        make(Server([response]), dimension=8, retries=0).embed_documents(["a"])


def test_wrong_dimension_is_refused():
    with pytest.raises(EmbeddingError, match=r"returned 8-dimensional vectors.*dimension is 16"):
        make(Server(), dimension=16).embed_documents(["a"])


def test_tokenize_approximates_without_a_tokenizer():
    embedder = make(Server(), dimension=8)
    assert embedder.tokenize("") == []
    assert embedder.tokenize("Roll back, then redeploy.") == ["Roll", "back", ",", "then", "redeploy", "."]
