"""A deliberately slow generation backend for overload tests, registered as a third-party plugin would be.

``tests/support/plugins`` registers it in ``citeline.generators`` as ``test-slow``; a test puts that folder
(and the repository) on ``PYTHONPATH`` of a real ``citeline serve`` and sets
``CITELINE_GENERATION__BACKEND=test-slow``. It answers exactly as the ``extractive`` backend does, after
sleeping ``CITELINE_TEST_GENERATION_S`` seconds (default 4) per generation, as a busy model server would
(a stream sleeps ``CITELINE_TEST_STREAM_S`` seconds before its first delta; default the same).
"""

from __future__ import annotations

import os
import time
from collections.abc import Generator

from citeline.contracts.generator import Generation, GenerationRequest
from citeline.generation.extractive import ExtractiveBackend

__all__ = ["SlowBackend"]


class SlowBackend(ExtractiveBackend):
    name = "test-slow"

    @property
    def delay_s(self) -> float:
        return float(os.environ.get("CITELINE_TEST_GENERATION_S", "4"))

    def generate(self, request: GenerationRequest) -> Generation:
        time.sleep(self.delay_s)
        return super().generate(request)

    def stream(self, request: GenerationRequest) -> Generator[str, None, str]:
        time.sleep(float(os.environ.get("CITELINE_TEST_STREAM_S", self.delay_s)))
        return (yield from super().stream(request))
