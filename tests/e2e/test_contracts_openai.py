"""The openai generation backend runs the generators' contract suite against a real OpenAI-compatible server:
``citeline model-server`` with the embedded SmolLM2 (the same surface vLLM serves)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from citeline import plugins
from citeline.settings import GenerationSettings
from citeline.testing.generators import GeneratorContract
from tests.e2e.test_generation import model_server  # noqa: F401  (the module-scoped server fixture)

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


class TestOpenAIGenerator(GeneratorContract):
    max_tokens = 16

    @pytest.fixture(scope="class")
    def backend(self, model_server, smollm2_dir) -> Iterator:  # noqa: F811
        backend = plugins.create(plugins.GENERATORS, "openai",
                                 {"base_url": model_server, "model": smollm2_dir.name, "retries": 0},
                                 section="generation.options", home=None,
                                 generation=GenerationSettings(backend="openai", timeout_s=120))
        yield backend
        backend.close()
