"""Preference tuning (DPO) with real peft and torch on a tiny Llama (SmolLM2's tokenizer and chat template): the
pairs `adapter data from-feedback` writes train an adapter that prefers the chosen answers more than the
starting model did, from the base or from an existing adapter, and the result passes the servers' preflight and
names its held-out data for `adapter eval`."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from typer.testing import CliRunner

from citeline.cli import app as cli_app
from citeline.errors import TrainingError
from citeline.lora.data import read_examples
from citeline.lora.feedback_data import EvidenceChunk, RatedAnswer, build_feedback_data
from citeline.lora.manifest import AdapterManifest, preflight
from citeline.lora.preference import HELDOUT_FILE, train_dpo
from citeline.lora.training import TRAINING_FILE, TrainingConfig
from tests.support.adapters import make_adapter
from tests.support.tiny_models import build_tiny_llama

pytestmark = pytest.mark.integration

TOPICS = ["returns", "warranty", "batteries", "firmware", "docks", "grippers", "invoices", "refunds", "parking",
          "printers", "wifi", "holidays"]


@pytest.fixture(scope="module")
def tiny_base(smollm2_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_llama(smollm2_dir, tmp_path_factory.mktemp("tiny") / "tiny-smollm2")


@pytest.fixture
def pairs(tmp_path: Path) -> Path:
    """Feedback pairs as from-feedback writes them: chosen answers cite and end with a next step."""
    chunks = {i: EvidenceChunk(i, i, f"{t} policy", None, f"{t.title()} are handled by desk {i}.")
              for i, t in enumerate(TOPICS)}
    rated = []
    for i, t in enumerate(TOPICS):
        q = f"Who handles {t}?"
        rated.append(RatedAnswer(2 * i, "support", "base", -1, "no citation", f"- Desk {i} [1].\nNext step: go.", q,
                                 f"I think it is probably some desk somewhere, {t} maybe.", (i,)))
    data = build_feedback_data("support", rated, chunks, frozenset(chunks), heldout=0.0)
    return data.write(tmp_path / "fb")["pairs"]


def cfg(tiny_base: Path, data: Path, output: Path, **kw) -> TrainingConfig:
    return TrainingConfig(**{"team": "support", "data": data, "output": output, "base_model": tiny_base,
                             "epochs": 3, "batch_size": 4, "heldout": 0.25, "threads": 2, "learning_rate": 5e-3,
                             **kw})


@pytest.mark.slow  # ~40 s at load 6 on 2 cores (9 steps, evaluated before and after)
def test_dpo_from_the_base_prefers_the_chosen_answers_and_is_servable(tiny_base, pairs, tmp_path):
    result = train_dpo(cfg(tiny_base, pairs, tmp_path / "dpo"), beta=0.5)
    assert result.completed and result.total_steps == 3 * 3  # 9 train pairs, batches of 4, 3 epochs
    m = result.manifest.metrics
    assert m["dpo_base_heldout_loss"] == pytest.approx(math.log(2), abs=1e-4)  # policy == reference at the start
    assert m["dpo_heldout_loss"] < m["dpo_base_heldout_loss"] and m["dpo_heldout_preferred"] > 0.5
    assert sum(result.losses[-3:]) < sum(result.losses[:3])  # the last epoch's loss below the first's
    assert preflight(tmp_path / "dpo", base_model_dir=tiny_base, max_rank=8) == []
    assert AdapterManifest.read(tmp_path / "dpo").team == "support"
    record = json.loads((tmp_path / "dpo" / TRAINING_FILE).read_text())
    assert record["method"] == "dpo" and record["data"].endswith(HELDOUT_FILE)
    held, problems, _ = read_examples(tmp_path / "dpo" / HELDOUT_FILE)  # what `adapter eval` reads back
    assert not problems and len(held) == 3 == len(record["heldout_lines"])
    assert all(e.reference.startswith("- Desk") for e in held)


def test_dpo_starts_from_an_existing_adapter_through_the_cli(tiny_base, pairs, tmp_path):
    start = make_adapter(tiny_base, tmp_path / "current", rank=4, seed=3)
    out = CliRunner().invoke(cli_app, ["adapter", "train", "--team", "support", "--data", str(pairs), "--method",
                                       "dpo", "--start-from", str(start), "--base", str(tiny_base), "--output",
                                       str(tmp_path / "next"), "--epochs", "1", "--heldout", "0.25", "--json"])
    assert out.exit_code == 0, out.output
    body = json.loads(out.output.strip().splitlines()[-1])
    assert body["completed"] and body["metrics"]["dpo_base_heldout_loss"] == pytest.approx(math.log(2), abs=1e-4)
    config = json.loads((tmp_path / "next" / "adapter_config.json").read_text())
    assert config["r"] == 4 and sorted(config["target_modules"]) == ["q_proj", "v_proj"]  # the starting adapter's


def test_bad_pairs_train_nothing(tiny_base, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": [{"role": "user", "content": "q"}], "chosen": "a", "rejected": "a"}\n'
                   '{"prompt": "not a list", "chosen": "a", "rejected": "b"}\nnot json\n')
    with pytest.raises(TrainingError) as caught:
        train_dpo(cfg(tiny_base, bad, tmp_path / "out"))
    assert "line 1: " in str(caught.value) and "line 2: " in str(caught.value) and "line 3: " in str(caught.value)
    assert not (tmp_path / "out").exists()
