"""The embedded generation backend (real SmolLM2-135M-Instruct on CPU) runs the generators' contract suite:
four short generations on the default engine."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from citeline import plugins
from citeline.settings import GenerationSettings
from citeline.testing.generators import GeneratorContract

pytestmark = [pytest.mark.integration, pytest.mark.slow]


class TestEmbeddedGenerator(GeneratorContract):
    max_tokens = 16

    @pytest.fixture(scope="class")
    def backend(self, smollm2_dir: Path) -> Iterator:
        home = Path(os.environ.get("CITELINE_TEST_MODELS", Path.home() / ".cache" / "citeline-test-models"))
        backend = plugins.create(plugins.GENERATORS, "embedded", {}, section="generation.options", home=home,
                                 generation=GenerationSettings(timeout_s=120))
        yield backend
        backend.close()
