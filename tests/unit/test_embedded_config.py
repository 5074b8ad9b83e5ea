"""The embedded backend's own options (``[generation.options]`` when ``backend = "embedded"``), without a model."""

from __future__ import annotations

import pytest

from citeline import plugins
from citeline.errors import ConfigError
from citeline.generation.local import EmbeddedBackend

pytestmark = pytest.mark.unit


def _configure(**options: object) -> EmbeddedBackend.Config:
    config = plugins.configure(EmbeddedBackend, options, section="generation.options")
    assert isinstance(config, EmbeddedBackend.Config)
    return config


def test_defaults_are_the_old_generation_settings() -> None:
    assert plugins.load(plugins.GENERATORS, "embedded") is EmbeddedBackend
    assert _configure().model_dump() == {"model": None, "device": "cpu", "engine": "auto", "threads": 1,
                                         "prompt_cache_mib": 64, "repetition_penalty": 1.3}
    assert _configure(engine="transformers", threads=4, prompt_cache_mib=0).engine == "transformers"


@pytest.mark.parametrize(("options", "field"), [
    ({"engine": "vllm"}, "engine"),
    ({"threads": 0}, "threads"),
    ({"prompt_cache_mib": -1}, "prompt_cache_mib"),
    ({"repetition_penalty": 0.5}, "repetition_penalty"),
    ({"base_url": "http://127.0.0.1:8000/v1"}, "base_url"),  # another backend's option
    ({"max_tokens": 64}, "max_tokens"),  # a core [generation] setting, not the backend's
])
def test_bad_options_are_refused_naming_the_section_and_field(options: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError, match=rf"(?s)\[generation.options\].*{field}"):
        _configure(**options)
