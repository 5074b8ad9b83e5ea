"""The real MiniLM embedder: int8 question encoding stays close to float32 and ranks the same way."""

from __future__ import annotations

import numpy as np
import pytest

from citeline.ingest.embedding import SentenceTransformerEmbedder
from citeline.settings import EmbeddingSettings

DOCS = [
    "To roll back a bad deploy, run `fleetctl rollback` with the previous release tag and watch the canary.",
    "Returns are accepted within 30 days of delivery; partner orders are refunded to the partner account.",
    "Primary carers get 20 weeks of paid parental leave; secondary carers get 6 weeks.",
    "The office printer on floor 3 jams when the paper tray is overfilled; remove the tray and fan the paper.",
]
QUESTIONS = ["how do I undo a broken release?", "can a partner get a refund for an order?",
             "how much leave do new parents get", "the printer keeps jamming"]


@pytest.fixture(scope="module")
def float_embedder() -> SentenceTransformerEmbedder:
    return SentenceTransformerEmbedder(EmbeddingSettings(query_int8=False, query_cache=0))


def test_int8_questions_match_float_questions(embedder, float_embedder) -> None:
    assert embedder.query_int8 and not float_embedder.query_int8
    docs = float_embedder.embed_documents(DOCS)
    for i, q in enumerate(QUESTIONS):
        fast, exact = embedder.embed_query(q), float_embedder.embed_query(q)
        assert fast.dtype == np.float32 and abs(float(np.linalg.norm(fast)) - 1.0) < 1e-4
        assert float(fast @ exact) > 0.97, q  # per-channel int8: measured 0.97-0.98 on questions
        assert int(np.argmax(docs @ fast)) == i == int(np.argmax(docs @ exact))
        assert abs(float(docs[i] @ fast) - float(docs[i] @ exact)) < 0.05  # refusal scores move little


def test_documents_never_use_the_int8_model(embedder, float_embedder) -> None:
    a, b = embedder.embed_documents(DOCS), float_embedder.embed_documents(DOCS)
    assert np.allclose(a, b, atol=1e-5)  # the index is the same whichever question encoder is configured


def test_question_vectors_are_deterministic_and_match_document_vectors_in_float() -> None:
    # questions skip SentenceTransformer.encode() (modules called directly): same pooling and normalisation,
    # no dropout, even in a fresh embedder asked a question before it ever embedded a document
    fresh = SentenceTransformerEmbedder(EmbeddingSettings(query_int8=False, query_cache=0))
    q = QUESTIONS[0]
    first, again = fresh.embed_query(q), fresh.embed_query(q)
    assert np.array_equal(first, again)
    assert np.allclose(first, fresh.embed_documents([q])[0], atol=1e-5)

