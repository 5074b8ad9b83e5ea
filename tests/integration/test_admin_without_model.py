"""Admin commands open an existing index without the embedding model (issue 15: `principals list` took 18 s).

The namespace records its embedding dimension, so `principals`, `keys` and `sources status` need no model;
the model is loaded (and its dimension checked against the index) only by the commands that embed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid

import pytest

from citeline import Citeline, SchemaMismatchError, Settings
from citeline.db import Database
from tests.conftest import REPO

pytestmark = pytest.mark.integration

# the CLI in a child process; on exit it reports which heavy modules it imported
_CHILD = """
import atexit, json, sys
atexit.register(lambda: print(json.dumps(sorted(m for m in ("torch", "sentence_transformers", "transformers")
                                                  if m in sys.modules)), file=sys.stderr))
from citeline.cli import main
sys.argv = ["citeline", *sys.argv[1:]]
main()
"""


@pytest.fixture
def namespace(pg_url, tmp_path):
    """An existing index (created with the default model's dimension, 384) and a config that names it."""
    name = f"nomodel_{uuid.uuid4().hex[:10]}"
    Database(pg_url, namespace=name, embedding_dim=384).close()
    root = tmp_path / "acme"
    shutil.copytree(REPO / "examples" / "acme", root, ignore=shutil.ignore_patterns(".citeline"))
    yield name, root / "citeline.toml"
    db = Database(pg_url, namespace=name, embedding_dim=384)
    db.close()
    db.drop_namespace()


def cli(pg_url: str, namespace: str, *args: str) -> tuple[str, list[str]]:
    env = {**os.environ, "CITELINE_DATABASE_URL": pg_url, "CITELINE_DATABASE__NAMESPACE": namespace}
    proc = subprocess.run([sys.executable, "-c", _CHILD, *args], env=env, capture_output=True, text=True,
                          timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout, json.loads(proc.stderr.strip().splitlines()[-1])


def test_admin_commands_do_not_load_the_model(pg_url, namespace):
    name, config = namespace
    for args in (("principals", "add", "alice", "--groups", "staff"), ("principals", "list"),
                 ("keys", "create", "alice"), ("sources", "status")):
        out, heavy = cli(pg_url, name, *args, "--config", str(config))
        assert heavy == [], f"`citeline {' '.join(args)}` imported {heavy}"
    out, _ = cli(pg_url, name, "principals", "list", "--json", "--config", str(config))
    assert [p["user"] for p in json.loads(out)] == ["alice"]


def test_a_model_of_another_dimension_is_refused_when_loaded(pg_url, namespace, monkeypatch):
    """Opened without the model, the index's dimension is still checked once the model is needed."""
    name, config = namespace
    other = f"{name}_7"
    Database(pg_url, namespace=other, embedding_dim=7).close()
    monkeypatch.setenv("CITELINE_DATABASE_URL", pg_url)
    try:
        with Citeline(Settings.load(config), namespace=other) as cl:
            assert cl.principals.list() == []  # no model needed
            with pytest.raises(SchemaMismatchError, match="7-dimensional"):
                _ = cl.embedder
    finally:
        db = Database(pg_url, namespace=other, embedding_dim=7)
        db.close()
        db.drop_namespace()
