"""What every GPU test shares: the ``gpu`` marker with its skip where no CUDA device is visible (CI has none; run
``pytest -m gpu tests/gpu`` on a GPU machine), and the tiny Llama they train (``CITELINE_TINY_BASE`` may name a
prebuilt folder, for a machine without the SmolLM2 package)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.support.tiny_models import build_tiny_llama


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    try:
        import torch

        cuda = torch.cuda.is_available()
    except ImportError:
        cuda = False
    here = Path(__file__).parent
    for item in items:
        if here in Path(item.path).parents:
            item.add_marker(pytest.mark.gpu)
            if not cuda:
                item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU"))


@pytest.fixture(scope="module")
def tiny_base(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    prebuilt = os.environ.get("CITELINE_TINY_BASE")
    if prebuilt:
        return Path(prebuilt)
    return build_tiny_llama(request.getfixturevalue("smollm2_dir"), tmp_path_factory.mktemp("tiny") / "tiny-smollm2")
