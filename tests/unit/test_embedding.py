"""The real MiniLM embedder and its question encoders: int8 engines stay close to float32 and rank the same."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from citeline.errors import ConfigError
from citeline.ingest.embedding import SentenceTransformerEmbedder

DOCS = [
    "To roll back a bad deploy, run `fleetctl rollback` with the previous release tag and watch the canary.",
    "Returns are accepted within 30 days of delivery; partner orders are refunded to the partner account.",
    "Primary carers get 20 weeks of paid parental leave; secondary carers get 6 weeks.",
    "The office printer on floor 3 jams when the paper tray is overfilled; remove the tray and fan the paper.",
]
QUESTIONS = ["how do I undo a broken release?", "can a partner get a refund for an order?",
             "how much leave do new parents get", "the printer keeps jamming"]
# lengths the exported graph must handle: one token, padding inside a batch, 60 tokens, 375 (truncated to 256)
ODD = ["hi", "x", "why " * 60, "what is the warranty on a Scout S2 robot bought through a partner " * 25]


def embedder_with(engine: str, cache: Path | None = None) -> SentenceTransformerEmbedder:
    return SentenceTransformerEmbedder(SentenceTransformerEmbedder.Config(query_encoder=engine, query_cache=0,
                                                                      cache=cache))


@pytest.fixture(scope="module")
def exact() -> SentenceTransformerEmbedder:
    return embedder_with("float")


# cosine to the float vector, measured: onnx 0.98-0.995 (0.975 for one-token inputs), torch per-channel
# 0.97-0.99 (0.88-0.95 for one-token inputs: activations are quantized with one scale per batch, so a long
# padded neighbour costs a short question precision)
@pytest.mark.parametrize(("engine", "floor", "odd_floor"), [("onnx-int8", 0.985, 0.97), ("torch-int8", 0.97, 0.85)])
def test_int8_questions_match_float_questions(engine, floor, odd_floor, exact, tmp_path) -> None:
    fast = embedder_with(engine, tmp_path)
    assert fast.query_encoder.engine == engine and exact.query_encoder.engine == "float"
    docs = exact.embed_documents(DOCS)
    for i, q in enumerate(QUESTIONS):
        a, b = fast.embed_query(q), exact.embed_query(q)
        assert a.dtype == np.float32 and abs(float(np.linalg.norm(a)) - 1.0) < 1e-4
        assert float(a @ b) > floor, q
        assert int(np.argmax(docs @ a)) == i == int(np.argmax(docs @ b))
        assert abs(float(docs[i] @ a) - float(docs[i] @ b)) < 0.05  # refusal scores move little
    batch = fast.query_encoder(ODD + QUESTIONS)  # one padded batch, as concurrent questions are encoded
    for row, text in zip(batch, ODD + QUESTIONS, strict=True):
        assert float(row @ exact.embed_query(text)) > odd_floor, text[:30]


def test_auto_prefers_onnx_and_reuses_the_export(tmp_path) -> None:
    first = embedder_with("auto", tmp_path)
    assert first.query_encoder.engine == "onnx-int8"
    exported = list((tmp_path / "query-encoders").glob("*.int8.onnx"))
    assert len(exported) == 1 and exported[0].stat().st_size > 1_000_000
    stamp = exported[0].stat().st_mtime_ns
    second = embedder_with("auto", tmp_path)
    assert second.query_encoder.path == exported[0] and exported[0].stat().st_mtime_ns == stamp  # not rebuilt
    assert not [p for p in (tmp_path / "query-encoders").iterdir() if p.name.startswith(".export-")]
    q = QUESTIONS[1]
    assert np.allclose(first.embed_query(q), second.embed_query(q), atol=1e-6)


def test_a_damaged_cached_export_is_exported_again(tmp_path) -> None:
    first = embedder_with("auto", tmp_path)
    cached = first.query_encoder.path
    cached.write_bytes(b"not an onnx model")  # a disk that lost the file's contents
    again = embedder_with("auto", tmp_path)
    assert again.query_encoder.engine == "onnx-int8" and again.query_encoder.path == cached
    assert cached.stat().st_size > 1_000_000
    q = QUESTIONS[2]
    assert np.allclose(first.embed_query(q), again.embed_query(q), atol=1e-6)


def test_a_file_where_the_cache_should_be_falls_back_or_names_the_fix(tmp_path) -> None:
    blocker = tmp_path / "cache"
    blocker.write_text("not a folder")  # mkdir under it fails, for root too (a read-only folder would not)
    assert embedder_with("auto", blocker).query_encoder.engine == "torch-int8"
    with pytest.raises(ConfigError, match=r"embedding\.options\.cache"):
        embedder_with("onnx-int8", blocker)


def test_float_questions_are_deterministic_and_match_document_vectors() -> None:
    # questions skip SentenceTransformer.encode() (modules called directly): same pooling and normalisation,
    # no dropout, even in a fresh embedder asked a question before it ever embedded a document
    fresh = embedder_with("float")
    q = QUESTIONS[0]
    first, again = fresh.embed_query(q), fresh.embed_query(q)
    assert np.array_equal(first, again)
    assert np.allclose(first, fresh.embed_documents([q])[0], atol=1e-5)


def test_documents_never_use_an_int8_engine(embedder, exact) -> None:
    a, b = embedder.embed_documents(DOCS), exact.embed_documents(DOCS)
    assert np.allclose(a, b, atol=1e-5)  # the index is the same whichever question encoder is configured


def test_cache_path_in_a_config_file_is_relative_to_that_file(tmp_path, monkeypatch) -> None:
    from citeline.facade import Citeline
    from citeline.settings import Settings

    (tmp_path / "conf").mkdir()
    toml = tmp_path / "conf" / "citeline.toml"
    toml.write_text('[embedding.options]\ncache = "qcache"\n')
    monkeypatch.chdir(tmp_path)  # not the config's folder
    embedder = Citeline(Settings.load(toml)).embedder
    assert embedder.query_encoder.path.parent == (tmp_path / "conf" / "qcache" / "query-encoders").resolve()
