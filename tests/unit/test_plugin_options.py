"""Each plugin's own typed section: [embedding.options], [chunking.options], [generation.options]."""

from __future__ import annotations

from pathlib import Path

import pytest

from citeline import plugins
from citeline.errors import ConfigError
from citeline.facade import Citeline
from citeline.generation.extractive import ExtractiveBackend
from citeline.generation.openai import OpenAIBackend
from citeline.ingest.chunking import StructuredChunker
from citeline.ingest.embedding import SentenceTransformerEmbedder
from citeline.settings import Settings

pytestmark = pytest.mark.unit

SECRET = "sk-do-not-print-0123456789"


def _load(tmp_path: Path, text: str = "") -> Settings:
    path = tmp_path / "citeline.toml"
    path.write_text(text)
    return Settings.load(path)


def test_options_tables_reach_the_plugins_config(tmp_path):
    s = _load(tmp_path, '[embedding.options]\nmodel = "models/minilm"\nbatch_size = 8\n'
                        '[chunking.options]\nchunk_tokens = 64\noverlap_tokens = 8\n'
                        '[generation]\nbackend = "openai"\nmax_tokens = 32\n'
                        '[generation.options]\nbase_url = "http://vllm:8000/v1"\nmodel = "m"\nretries = 0\n')
    emb = plugins.configure(SentenceTransformerEmbedder, s.embedding.options, section="embedding.options",
                            resolve_path=s.resolve_path)
    assert emb.model == (tmp_path / "models/minilm").resolve() and emb.batch_size == 8  # relative to the file
    chunker = plugins.create(plugins.CHUNKERS, s.chunking.chunker, s.chunking.options, section="chunking.options",
                             tokenize=str.split)
    assert chunker.name == "structured:64:8"
    backend = Citeline(s).backend
    assert isinstance(backend, OpenAIBackend)
    assert (backend.config.base_url, backend.base_model, backend.config.retries) == ("http://vllm:8000/v1", "m", 0)
    assert s.generation.max_tokens == 32  # the core fields stay in [generation]
    backend.close()


def test_extractive_backend_from_its_empty_config(tmp_path):
    backend = Citeline(_load(tmp_path, '[generation]\nbackend = "extractive"\n')).backend
    assert isinstance(backend, ExtractiveBackend)


@pytest.mark.parametrize("group, name, options, section, context, key", [
    (plugins.EMBEDDERS, "sentence-transformers", {"modle": "x"}, "embedding.options", {}, "modle"),
    (plugins.CHUNKERS, "structured", {"chunk_tokens": 8}, "chunking.options", {"tokenize": str.split},
     "chunk_tokens"),
    (plugins.CHUNKERS, "structured", {"chunk_tokens": 40, "overlap_tokens": 40}, "chunking.options",
     {"tokenize": str.split}, "overlap_tokens must be smaller"),
    (plugins.GENERATORS, "openai", {"base_url": "http://x/v1", "model": "m", "engine": "auto"}, "generation.options",
     {}, "engine"),
    (plugins.GENERATORS, "extractive", {"model": "m"}, "generation.options", {}, "model"),
])
def test_unknown_or_bad_option_names_section_and_key(group, name, options, section, context, key):
    with pytest.raises(ConfigError, match=rf"\[{section}\]") as caught:
        plugins.create(group, name, options, section=section, **context)
    assert key in str(caught.value)


@pytest.mark.parametrize("text, old, new", [
    ('[generation]\nbase_url = "http://x/v1"\n', "generation.base_url", r"\[generation.options\] base_url"),
    ('[generation]\nengine = "llamacpp"\n', "generation.engine", r"\[generation.options\] engine"),
    ('[embedding]\nmodel = "m"\n', "embedding.model", r"\[embedding.options\] model"),
    ('[embedding]\nquery_encoder = "float"\n', "embedding.query_encoder", r"\[embedding.options\] query_encoder"),
    ("[chunking]\nmax_chars = 500\n", "chunking.max_chars", r"\[chunking.options\] max_chars"),
])
def test_moved_keys_in_the_file_say_where_they_went(tmp_path, text, old, new):
    with pytest.raises(ConfigError, match=rf"{old} moved to {new}"):
        _load(tmp_path, text)


def test_moved_keys_in_the_environment_name_the_new_variable(tmp_path, monkeypatch):
    monkeypatch.setenv("CITELINE_GENERATION__BASE_URL", "http://x/v1")
    with pytest.raises(ConfigError, match="CITELINE_GENERATION__OPTIONS__BASE_URL"):
        _load(tmp_path)


def test_environment_nests_into_options_and_merges_with_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("CITELINE_GENERATION__BACKEND", "openai")
    monkeypatch.setenv("CITELINE_GENERATION__OPTIONS__BASE_URL", "http://vllm:8000/v1")
    monkeypatch.setenv("CITELINE_GENERATION__OPTIONS__RETRIES", "1")
    monkeypatch.setenv("CITELINE_EMBEDDING__OPTIONS__QUERY_ENCODER", "float")
    monkeypatch.setenv("CITELINE_CHUNKING__OPTIONS__CHUNK_TOKENS", "100")
    s = _load(tmp_path, '[generation]\nmax_tokens = 64\n[generation.options]\nmodel = "m"\nretries = 5\n'
                        "[chunking.options]\noverlap_tokens = 10\n")
    assert s.generation.backend == "openai" and s.generation.max_tokens == 64
    assert s.generation.options == {"base_url": "http://vllm:8000/v1", "model": "m", "retries": "1"}  # env wins
    assert s.embedding.options == {"query_encoder": "float"}
    config = plugins.configure(OpenAIBackend, s.generation.options, section="generation.options")
    assert config.retries == 1  # the Config turns the environment's strings into its types
    chunks = plugins.configure(StructuredChunker, s.chunking.options, section="chunking.options")
    assert (chunks.chunk_tokens, chunks.overlap_tokens) == (100, 10)


def test_api_key_is_secret_and_never_echoed(tmp_path, monkeypatch):
    monkeypatch.setenv("CITELINE_GENERATION__OPTIONS__API_KEY", SECRET)
    s = _load(tmp_path, '[generation]\nbackend = "openai"\n[generation.options]\nbase_url = "http://x/v1"\n'
                        'model = "m"\nretries = "many"\n')
    assert SECRET not in repr(s) and SECRET not in str(s)
    with pytest.raises(ConfigError) as caught:  # a bad option beside the key
        _ = Citeline(s).backend
    assert "retries" in str(caught.value) and SECRET not in str(caught.value)
    assert caught.value.__cause__ is None and caught.value.__suppress_context__  # no chained ValidationError
    config = plugins.configure(OpenAIBackend, {"base_url": "http://x/v1", "model": "m", "api_key": SECRET},
                               section="generation.options")
    assert config.api_key.get_secret_value() == SECRET and SECRET not in repr(config)
    with pytest.raises(ConfigError) as caught:  # a misspelt key holding the secret
        plugins.configure(OpenAIBackend, {"api-key": SECRET}, section="generation.options")
    assert "api-key" in str(caught.value) and SECRET not in str(caught.value)


def test_old_secret_key_in_the_environment_is_not_echoed(tmp_path, monkeypatch):
    monkeypatch.setenv("CITELINE_GENERATION__API_KEY", SECRET)
    with pytest.raises(ConfigError, match=r"generation\.api_key moved") as caught:
        _load(tmp_path)
    assert SECRET not in str(caught.value)
    assert caught.value.__cause__ is None
