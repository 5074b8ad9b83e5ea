"""One version: pyproject.toml's, read through importlib.metadata by `citeline.__version__` and `--version`."""

from __future__ import annotations

import importlib.metadata
import tomllib

import pytest
from typer.testing import CliRunner

import citeline
from citeline.cli import app
from tests.conftest import REPO

pytestmark = pytest.mark.unit


def test_the_version_is_pyprojects():
    declared = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]["version"]
    assert citeline.__version__ == importlib.metadata.version("citeline") == declared


def test_cli_prints_the_version():
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == f"citeline {citeline.__version__}"
