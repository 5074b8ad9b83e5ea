"""The ``openai`` embedder against a real OpenAI-compatible server: ``citeline model-server``'s /v1/embeddings
serving the local sentence-transformers embedder; and the index refusing vectors of another embedder."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import psycopg
import pytest
from psycopg import sql

from citeline import plugins
from citeline.errors import SchemaMismatchError
from citeline.facade import Citeline
from citeline.settings import Settings
from citeline.testing.embedders import TEXTS, EmbedderContract
from tests.e2e.conftest import run_model_server

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.fixture(scope="module")
def embeddings_server(tmp_path_factory) -> Iterator[str]:
    """`citeline model-server` (extractive generation: no LLM to load) on loopback; its /v1 URL."""
    log = tmp_path_factory.mktemp("ms") / "model-server.log"
    env = {**os.environ, "CITELINE_GENERATION__BACKEND": "extractive", "CITELINE_HOME": str(log.parent),
           "HF_HUB_OFFLINE": "1"}
    with run_model_server(env, log) as url:
        yield f"{url}/v1"


def options(url: str, embedder, **more) -> dict:
    return {"base_url": url, "model": embedder.name.split(":", 1)[1], "retries": 0, "batch_size": 3, **more}


class TestOpenAIEmbedder(EmbedderContract):
    @pytest.fixture(scope="class")
    def embedder(self, embeddings_server, request) -> Iterator:
        local = request.getfixturevalue("embedder_local")
        remote = plugins.create(plugins.EMBEDDERS, "openai", options(embeddings_server, local),
                                section="embedding.options", home=None)
        yield remote
        remote.close()


@pytest.fixture(scope="module")
def embedder_local():
    from citeline.ingest.embedding import SentenceTransformerEmbedder

    return SentenceTransformerEmbedder()


def test_vectors_equal_the_local_embedders(embeddings_server, embedder_local):
    remote = plugins.create(plugins.EMBEDDERS, "openai", options(embeddings_server, embedder_local),
                            section="embedding.options", home=None)
    texts = [*TEXTS, "Refunds take 5 business days.", "Das Paket kam beschädigt an."]  # 6 texts: 2 batches of 3
    assert remote.dimension == embedder_local.dimension  # probed once from the server
    assert np.allclose(remote.embed_documents(texts), embedder_local.embed_documents(texts), atol=1e-4)
    question = "how do I roll back a bad deploy"
    assert np.allclose(remote.embed_query(question), embedder_local.embed_documents([question])[0], atol=1e-4)
    assert remote.name == f"openai:{embedder_local.name.split(':', 1)[1]}" != embedder_local.name


def test_the_openai_clients_default_base64_encoding(embeddings_server, embedder_local):
    import openai

    client = openai.OpenAI(base_url=embeddings_server, api_key="unused", max_retries=0)
    resp = client.embeddings.create(model=embedder_local.name.split(":", 1)[1], input=["x", "a refund"])
    vectors = np.asarray([d.embedding for d in resp.data], dtype=np.float32)  # the client decoded base64
    assert np.allclose(vectors, embedder_local.embed_documents(["x", "a refund"]), atol=1e-4)
    assert resp.usage.prompt_tokens > 0


def test_an_unknown_model_is_a_clear_error(embeddings_server):
    from citeline.errors import EmbeddingError

    remote = plugins.create(plugins.EMBEDDERS, "openai", {"base_url": embeddings_server, "model": "nope",
                                                          "retries": 0}, section="embedding.options", home=None)
    with pytest.raises(EmbeddingError, match=r"does not serve model 'nope'"):
        remote.embed_query("q")


def _settings(root: Path, pg_url: str, namespace: str, embedding: dict | None = None) -> Settings:
    return Settings.load(root / "citeline.toml", database_url=pg_url, database={"namespace": namespace},
                         **({"embedding": embedding} if embedding else {}))


def test_the_index_refuses_another_embedder_and_adopts_one_where_none_is_recorded(
        tmp_path, pg_url, embeddings_server, embedder_local):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "deploy.md").write_text("# Deploys\n\nRoll back with acme-deploy rollback fleet.\n")
    (tmp_path / "citeline.toml").write_text('home = ".citeline"\n[[sources]]\nname = "docs"\nconnector = "folder"\n'
                                            'config = { path = "docs" }\naccess = { public = true }\n')
    namespace = f"e2e_emb_{os.getpid()}"
    remote = {"provider": "openai", "options": options(embeddings_server, embedder_local)}
    try:
        with Citeline(_settings(tmp_path, pg_url, namespace), embedder=embedder_local) as cl:
            assert cl.sync()[0].status == "succeeded"  # records sentence-transformers:<model>
        with Citeline(_settings(tmp_path, pg_url, namespace, remote)) as cl, \
                pytest.raises(SchemaMismatchError) as refused:
            cl.search("roll back", user=None)
        message = str(refused.value)
        assert f"indexed by the embedder {embedder_local.name!r}" in message and "new namespace" in message
        assert "'openai:" in message

        # an index from before the embedder was recorded: the next embedder is adopted silently
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DELETE FROM {}.index_meta WHERE key = 'embedder'").format(sql.Identifier(namespace)))
        with Citeline(_settings(tmp_path, pg_url, namespace, remote)) as cl:
            assert cl.search("roll back", user=None).hits  # same model behind the API: same vectors
        with Citeline(_settings(tmp_path, pg_url, namespace), embedder=embedder_local) as cl, \
                pytest.raises(SchemaMismatchError, match=r"indexed by the embedder 'openai:"):
            cl.sync()
    finally:
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(namespace)))
