from __future__ import annotations

from pathlib import Path

import pytest

from citeline.errors import ConfigError
from citeline.settings import Settings

pytestmark = pytest.mark.unit


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "citeline.toml"
    path.write_text(text)
    return path


def test_toml_then_environment_with_nested_delimiter(tmp_path, monkeypatch):
    cfg = _write(tmp_path, 'home = "data"\n[retrieval]\ntop_k = 3\n[[sources]]\nname = "wiki"\nconnector = "folder"\n'
                           'config = { path = "wiki" }\n')
    monkeypatch.setenv("CITELINE_RETRIEVAL__RRF_K", "10")
    settings = Settings.load(cfg)
    assert settings.retrieval.top_k == 3 and settings.retrieval.rrf_k == 10
    assert settings.home == (tmp_path / "data").resolve()
    assert settings.resolve_path("wiki") == (tmp_path / "wiki").resolve()
    assert settings.source("wiki").connector == "folder"
    monkeypatch.setenv("CITELINE_RETRIEVAL__TOP_K", "9")
    assert Settings.load(cfg).retrieval.top_k == 9  # environment beats the file


def test_database_url_is_secret_and_validated(tmp_path, monkeypatch):
    monkeypatch.setenv("CITELINE_DATABASE_URL", "postgresql://u:hunter2@db/x")
    settings = Settings.load(_write(tmp_path, ""))
    assert settings.effective_database_url() == "postgresql://u:hunter2@db/x"
    assert "hunter2" not in repr(settings)
    monkeypatch.setenv("CITELINE_DATABASE_URL", "mysql://nope")
    with pytest.raises(ConfigError, match="postgresql://"):
        Settings.load(_write(tmp_path, ""))


@pytest.mark.parametrize("text, message", [
    ("[retrieval]\ntop_k = 0\n", "top_k"),
    ("[chunking]\nchunk_tokens = 100\n", r"chunking.chunk_tokens moved to \[chunking.options\] chunk_tokens"),
    ("bogus = 1\n", "bogus"),
    ('[[sources]]\nname = "Bad Name"\nconnector = "folder"\n', "source name"),
    ('[[sources]]\nname = "a"\nconnector = "folder"\n[[sources]]\nname = "a"\nconnector = "x"\n', "unique"),
    ("[retrieval\n", "invalid configuration"),
])
def test_bad_configuration_names_the_setting(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message):
        Settings.load(_write(tmp_path, text))


def test_missing_config_file_and_unknown_source(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        Settings.load(tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match="unknown source 'x'"):
        Settings.load(_write(tmp_path, "")).source("x")


def test_scheduler_section_from_file_and_environment(tmp_path, monkeypatch):
    toml = tmp_path / "citeline.toml"
    toml.write_text("[scheduler]\nretries = 5\nbackoff_s = 10\n")
    monkeypatch.setenv("CITELINE_SCHEDULER__MAX_BACKOFF_S", "60")
    s = Settings.load(toml).scheduler
    assert (s.retries, s.backoff_s, s.max_backoff_s, s.tick_s) == (5, 10.0, 60.0, 30.0)
    monkeypatch.setenv("CITELINE_SCHEDULER__MAX_BACKOFF_S", "5")
    with pytest.raises(ConfigError, match="max_backoff_s must be >= scheduler.backoff_s"):
        Settings.load(toml)
