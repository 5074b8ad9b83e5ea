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


def embedder_with(engine: str, cache: Path | None = None, documents: str = "float") -> SentenceTransformerEmbedder:
    return SentenceTransformerEmbedder(SentenceTransformerEmbedder.Config(query_encoder=engine, query_cache=0,
                                                                      cache=cache, document_encoder=documents))


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


@pytest.mark.parametrize(("engine", "floor"), [("onnx-float", 0.9999), ("onnx-int8", 0.985)])
def test_document_engines_match_the_float_model_row_for_row(engine, floor, exact, tmp_path) -> None:
    fast = embedder_with("float", tmp_path, documents=engine)
    assert fast.document_encoder is not None and fast.document_encoder.engine == engine
    assert fast.name == exact.name  # same model, same index: the engine re-embeds nothing
    # unsorted lengths, a duplicate, one-token and truncated texts, many rows over two workers: each row must come
    # back in its own place
    texts = [*DOCS, *ODD, DOCS[0], *(f"{d} (copy {i})" for i, d in enumerate(DOCS * 20))]
    fast._document_workers = 2
    a, b = fast.embed_documents(texts), exact.embed_documents(texts)
    assert a.shape == b.shape == (len(texts), exact.dimension) and a.dtype == np.float32
    assert np.allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-4)
    cosines = (a * b).sum(axis=1)
    prose = np.r_[0:len(DOCS), len(DOCS) + len(ODD):len(texts)]  # one-token texts lose more to int8 (0.975)
    assert float(cosines[prose].min()) > floor, texts[int(prose[cosines[prose].argmin()])][:40]
    assert float(cosines.min()) > min(floor, 0.97), texts[int(cosines.argmin())][:40]
    assert np.allclose(a[0], a[len(DOCS) + len(ODD)], atol=1e-6)  # the duplicate, far apart in the input
    for i in (0, len(DOCS), len(texts) - 1):  # a vector is a function of its text alone, whatever else is embedded
        assert np.array_equal(a[i], fast.embed_documents([texts[i]])[0])
    assert fast.embed_documents([]).shape == (0, exact.dimension)
    for i, q in enumerate(QUESTIONS):  # ranking of the documents by each question is unchanged
        assert int(np.argmax(a[: len(DOCS)] @ exact.embed_query(q))) == i


def test_float_documents_use_the_model_itself(exact) -> None:
    assert exact.document_encoder is None
    assert np.allclose(exact.embed_documents(DOCS[:1])[0], exact._model.encode(DOCS[:1], normalize_embeddings=True)[0],
                       atol=1e-6)


def test_document_encoder_falls_back_or_names_the_fix(exact, tmp_path) -> None:
    from citeline.ingest.query_encoder import build_document_encoder

    blocker = tmp_path / "cache"
    blocker.write_text("not a folder")  # no export possible here
    assert embedder_with("float", blocker, documents="auto").document_encoder is None  # auto: the float model
    with pytest.raises(ConfigError, match=r"document_encoder = 'onnx-int8' cannot run.*'float'"):
        embedder_with("float", blocker, documents="onnx-int8")
    on_gpu = {"model": exact._model, "model_dir": tmp_path, "device": "cuda", "cache_dir": tmp_path, "threads": 1}
    assert build_document_encoder(engine="auto", **on_gpu) is None  # the model itself, on its device
    with pytest.raises(ConfigError, match=r"'onnx-float' runs on CPU only.*'float'"):
        build_document_encoder(engine="onnx-float", **on_gpu)


def test_cache_path_in_a_config_file_is_relative_to_that_file(tmp_path, monkeypatch) -> None:
    from citeline.facade import Citeline
    from citeline.settings import Settings

    (tmp_path / "conf").mkdir()
    toml = tmp_path / "conf" / "citeline.toml"
    toml.write_text('[embedding.options]\ncache = "qcache"\n')
    monkeypatch.chdir(tmp_path)  # not the config's folder
    embedder = Citeline(Settings.load(toml)).embedder
    assert embedder.query_encoder.path.parent == (tmp_path / "conf" / "qcache" / "query-encoders").resolve()
