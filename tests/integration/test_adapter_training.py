"""Adapter training with real peft and torch: a tiny Llama (SmolLM2's tokenizer and chat template) for the
mechanics (assistant-only labels, resumable checkpoints, a servable output, refusals), and the real
SmolLM2-135M-Instruct on the example support dataset for the effect (slow)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from citeline.errors import TrainingError
from citeline.lora.batches import encode
from citeline.lora.data import check_data
from citeline.lora.manifest import ADAPTER_CONFIG, LLAMA_MODULES, AdapterManifest, base_model_fingerprint, preflight
from citeline.lora.training import TRAINING_FILE, TrainingConfig, qlora_missing, train_adapter
from tests.conftest import REPO
from tests.support.tiny_models import build_tiny_llama
from tests.unit.test_adapter_data import chat, write

pytestmark = pytest.mark.integration

SUPPORT = REPO / "examples" / "adapters" / "support"


@pytest.fixture(scope="module")
def tiny_base(smollm2_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer Llama with random weights and SmolLM2's tokenizer: trains in seconds."""
    return build_tiny_llama(smollm2_dir, tmp_path_factory.mktemp("tiny") / "tiny-smollm2")


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return write(tmp_path, [chat(i) for i in range(22)])


def config(tiny_base: Path, data: Path, output: Path, **kw) -> TrainingConfig:
    return TrainingConfig(**{"team": "support", "data": data, "output": output, "base_model": tiny_base,
                             "epochs": 2, "batch_size": 4, "save_every": 2, "threads": 2, **kw})


def test_loss_is_taken_on_the_assistant_tokens_only(smollm2_dir: Path, tmp_path: Path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    multi = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "first question"},
                          {"role": "assistant", "content": "first answer"},
                          {"role": "user", "content": "second question"},
                          {"role": "assistant", "content": "second answer"}]}
    example = check_data(write(tmp_path, [multi] + [chat(i) for i in range(10)]), heldout=0.0,
                         min_examples=1).examples[0]
    enc = encode(tokenizer, example, 1024)
    learned = tokenizer.decode([t for t, label in zip(enc.ids, enc.labels, strict=True) if label != -100])
    assert learned == "first answer<|im_end|>\nsecond answer<|im_end|>\n"
    assert len(enc.ids) == len(enc.labels)


def test_trains_a_servable_peft_adapter_with_a_manifest(tiny_base: Path, data: Path, tmp_path: Path):
    out = tmp_path / "support"
    seen: list[int] = []
    result = train_adapter(config(tiny_base, data, out), progress=lambda p: seen.append(p.step))
    assert result.completed and result.step == result.total_steps == seen[-1] == 2 * 5  # 19 train / 4 per batch
    assert not (out / "checkpoints").exists()  # removed once the adapter is written
    assert preflight(out, base_model_dir=tiny_base, max_rank=8) == []
    adapter_config = json.loads((out / ADAPTER_CONFIG).read_text())
    assert adapter_config["peft_type"] == "LORA" and not adapter_config.get("modules_to_save")
    assert set(adapter_config["target_modules"]) <= LLAMA_MODULES
    manifest = AdapterManifest.read(out)
    assert manifest is not None
    assert manifest.base_model == tiny_base.name and manifest.base_fingerprint == base_model_fingerprint(tiny_base)
    assert manifest.rank == 8 and manifest.team == "support" and manifest.data_hash == result.report.data_hash
    assert {"train_loss", "heldout_loss", "base_heldout_loss", "steps"} <= set(manifest.metrics)
    training = json.loads((out / TRAINING_FILE).read_text())
    assert training["seed"] == 0 and len(training["heldout_lines"]) == 3
    with pytest.raises(TrainingError, match="already holds a trained adapter"):
        train_adapter(config(tiny_base, data, out))


def test_interrupted_training_resumes_to_the_same_result(tiny_base: Path, data: Path, tmp_path: Path):
    import torch
    from safetensors.torch import load_file

    straight = train_adapter(config(tiny_base, data, tmp_path / "straight"))

    stop = threading.Event()
    out = tmp_path / "resumed"

    def interrupt(p) -> None:
        if p.step == 3:
            stop.set()  # what Ctrl-C does in the CLI

    first = train_adapter(config(tiny_base, data, out), progress=interrupt, stop=stop)
    assert not first.completed and first.step == 3
    assert (out / "checkpoints" / "step-000003" / "state.json").is_file()
    assert not (out / "citeline_adapter.json").exists()
    second = train_adapter(config(tiny_base, data, out))
    assert second.completed and second.resumed_from == 3
    assert second.step == straight.step == second.total_steps
    assert second.losses == pytest.approx(straight.losses, rel=1e-4)
    a, b = load_file(str(out / "adapter_model.safetensors")), load_file(str(tmp_path / "straight" /
                                                                            "adapter_model.safetensors"))
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)


def test_checkpoints_of_another_run_are_not_continued(tiny_base: Path, data: Path, tmp_path: Path):
    stop = threading.Event()
    stop.set()
    out = tmp_path / "a"
    assert not train_adapter(config(tiny_base, data, out), stop=stop).completed
    with pytest.raises(TrainingError, match="another training run.*rank"):
        train_adapter(config(tiny_base, data, out, rank=4, alpha=8))
    assert train_adapter(config(tiny_base, data, out, rank=4, alpha=8), resume=False).completed


def test_training_continues_an_existing_adapter(tiny_base: Path, data: Path, tmp_path: Path):
    """--start-from: the adapter's own rank and targets (whatever the options say), its held-out loss before the
    first step recorded, lower after; a start that is not an adapter for this base is refused before training."""
    import torch
    from safetensors.torch import load_file

    first = train_adapter(config(tiny_base, data, tmp_path / "first", rank=4, alpha=8, epochs=1,
                                 target_modules=("q_proj", "v_proj")))
    more = train_adapter(config(tiny_base, data, tmp_path / "more", start_from=tmp_path / "first", learning_rate=5e-3))
    assert more.completed and more.manifest is not None
    assert more.manifest.rank == 4 and set(more.manifest.target_modules) == {"q_proj", "v_proj"}
    metrics = more.manifest.metrics
    assert metrics["heldout_loss"] < metrics["start_heldout_loss"] <= first.heldout_loss + 1e-3
    a, b = load_file(str(tmp_path / "first" / "adapter_model.safetensors")), load_file(
        str(tmp_path / "more" / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and any(not torch.equal(a[k], b[k]) for k in a)  # trained further, not copied
    assert preflight(tmp_path / "more", base_model_dir=tiny_base, max_rank=4) == []
    assert json.loads((tmp_path / "more" / TRAINING_FILE).read_text())["start_from"]  # the start's weights hash

    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / ADAPTER_CONFIG).write_text('{"peft_type": "LORA"}')
    with pytest.raises(TrainingError, match="cannot start from .*junk"):
        train_adapter(config(tiny_base, data, tmp_path / "never", start_from=tmp_path / "junk"))
    assert not (tmp_path / "never").exists()


def test_bad_data_trains_nothing(tiny_base: Path, tmp_path: Path):
    rows = [chat(i) for i in range(12)] + [chat(3)]
    out = tmp_path / "out"
    with pytest.raises(TrainingError, match=r"(?s)1 problem.*line 13: same user and assistant text as line 4"):
        train_adapter(config(tiny_base, write(tmp_path, rows), out))
    assert not out.exists()


def test_qlora_without_gpu_says_what_is_missing(tiny_base: Path, data: Path, tmp_path: Path):
    # the CLI runs with every GPU hidden for real (CUDA_VISIBLE_DEVICES=""), so this holds on any machine
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run([sys.executable, "-c", "from citeline.cli import main; main()", "adapter", "train",
                           "--team", "support", "--data", str(data), "--base", str(tiny_base), "--output",
                           str(tmp_path / "q2"), "--qlora"], env=env, capture_output=True, text=True, timeout=300)
    said = " ".join((done.stdout + done.stderr).split())
    assert done.returncode == 1, said
    assert "--qlora needs a CUDA GPU" in said and "without --qlora" in said
    assert not (tmp_path / "q2").exists()  # nothing trained, nothing written

    missing = qlora_missing()  # in process: what this machine itself lacks, named in the error
    if missing:
        with pytest.raises(TrainingError, match="--qlora needs") as info:
            train_adapter(config(tiny_base, data, tmp_path / "q", qlora=True))
        for part in missing:
            assert part in str(info.value)
        assert not (tmp_path / "q").exists()


def test_cli_check_data_reports_problems_and_exit_code(smollm2_dir: Path, tmp_path: Path):
    from citeline.cli import app

    runner = CliRunner()
    good = runner.invoke(app, ["adapter", "check-data", str(SUPPORT / "train.jsonl"), "--base", str(smollm2_dir),
                               "--json"])
    assert good.exit_code == 0, good.output
    body = json.loads(good.output)
    assert body["ok"] and body["examples"] == 128 and body["heldout"] == 13
    bad = write(tmp_path, [chat(i) for i in range(10)] + ["{oops", chat(2)])
    result = runner.invoke(app, ["adapter", "check-data", str(bad), "--base", str(smollm2_dir)])
    assert result.exit_code == 1
    assert "malformed_json" in result.output and "duplicate" in result.output


def test_cli_train_then_eval(tiny_base: Path, data: Path, tmp_path: Path):
    from citeline.cli import app
    from citeline.lora.evaluation import EVAL_FILE

    runner = CliRunner()
    out = tmp_path / "support"
    trained = runner.invoke(app, ["adapter", "train", "--team", "support", "--data", str(data), "--base",
                                  str(tiny_base), "--output", str(out), "--epochs", "1", "--json"])
    assert trained.exit_code == 0, trained.output
    assert json.loads(trained.output)["completed"] is True
    evaluated = runner.invoke(app, ["adapter", "eval", str(out), "--rules", str(SUPPORT / "rules.toml"), "--base",
                                    str(tiny_base), "--max-tokens", "8", "--against", "none", "--json"])
    assert evaluated.exit_code == 0, evaluated.output
    body = json.loads(evaluated.output)
    assert body["examples"] == 3 and set(body["scores"]) == {"adapter", "base", "baseline"}
    assert body["decision"]["promote"] is False  # a random tiny model beats nothing; grounding unmeasured too
    assert (out / EVAL_FILE).is_file()


# -- the real model ------------------------------------------------------------------------------------------


def _compact(row: dict) -> dict:
    """A shorter example for the CPU test: the grounded user message and reply, without the long system prompt."""
    messages = [m for m in row["messages"] if m["role"] != "system"]
    return {"prompt": messages[0]["content"], "completion": messages[1]["content"]}


@pytest.fixture(scope="module")
def support_adapter(smollm2_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """SmolLM2 trained on CPU on the first 44 examples of the support dataset (compact form): ~5 min here."""
    tmp = tmp_path_factory.mktemp("support")
    rows = [json.loads(line) for line in (SUPPORT / "train.jsonl").read_text().splitlines()[:44]]
    data = write(tmp, [_compact(r) for r in rows])
    out = tmp / "support"
    started = time.monotonic()
    result = train_adapter(TrainingConfig(team="support", data=data, output=out, base_model=smollm2_dir, epochs=2,
                                          batch_size=4, heldout=0.1, threads=2))
    return out, result, time.monotonic() - started


@pytest.mark.slow
def test_a_cpu_trained_lora_moves_held_out_answers_toward_the_team_format(smollm2_dir: Path, support_adapter):
    from citeline.generation.local import EmbeddedBackend
    from citeline.lora.evaluation import evaluate_adapter, heldout_examples, load_rules
    from citeline.settings import GenerationSettings

    out, result, trained_s = support_adapter
    assert result.completed and result.heldout_loss < result.base_heldout_loss
    rules = load_rules(SUPPORT / "rules.toml")
    backend = EmbeddedBackend(EmbeddedBackend.Config(model=str(smollm2_dir)), home=smollm2_dir.parent,
                              generation=GenerationSettings())
    backend.load_adapter("support", out)
    examples = heldout_examples(out)
    report = evaluate_adapter(out, rules, backend, adapter_name="support", examples=examples, max_tokens=96)
    backend.close()
    adapter, base, baseline = (report.scores[k] for k in ("adapter", "base", "baseline"))
    print(f"\ntrained {result.step} steps on {len(result.report.split.train)} examples in {trained_s:.0f} s; held-out "
          f"loss {result.base_heldout_loss:.3f} -> {result.heldout_loss:.3f}; evaluated {report.examples} held-out "
          f"prompts in {report.seconds:.0f} s")
    for s in (base, baseline, adapter):
        print(f"  {s.name:9} compliance {s.compliance:.0%} per rule {s.per_rule} ROUGE-L {s.similarity:.3f}")
    assert adapter.compliance > base.compliance
    assert sum(adapter.per_rule.values()) > sum(base.per_rule.values())
    assert adapter.similarity > base.similarity


@pytest.mark.slow
def test_grounding_with_and_without_the_adapter_through_the_assistant(smollm2_dir: Path, support_adapter, pg_url,
                                                                       embedder, tmp_path: Path):
    """The real Assistant over the Acme example (embedded PostgreSQL, real retrieval, audit), as alice."""
    import uuid

    from citeline.answers.assistant import Assistant
    from citeline.facade import Citeline
    from citeline.generation.local import EmbeddedBackend
    from citeline.lora.evaluation import grounding_check
    from citeline.settings import GenerationSettings, Settings

    root = tmp_path / "acme"
    shutil.copytree(REPO / "examples" / "acme", root, ignore=shutil.ignore_patterns(".citeline"))
    settings = Settings.load(root / "citeline.toml", database_url=pg_url,
                             database={"namespace": f"t_{uuid.uuid4().hex[:12]}"})
    backend = EmbeddedBackend(EmbeddedBackend.Config(model=str(smollm2_dir)), home=smollm2_dir.parent,
                              generation=GenerationSettings())
    backend.load_adapter("support", support_adapter[0])
    questions = ["How long is the warranty?", "How do I start a return?", "How do I reset the Dock?",
                 "what is the capital of Mongolia?"]
    with Citeline(settings, embedder=embedder, backend=backend) as cl:
        cl.sync()
        cl.admin.import_principals(root / "principals.toml", actor="test")
        assistant = Assistant(cl.retriever, backend, cl.audit, answer=settings.answer,
                              generation=GenerationSettings(max_tokens=96))
        g = grounding_check(assistant, cl.principals.get("alice"), questions, adapter_name="support")
        db = cl.db
    db.drop_namespace()
    print(f"\ngrounded answers: {g.base_grounded}/{g.base_answered} without the adapter, "
          f"{g.adapter_grounded}/{g.adapter_answered} with it")
    assert g.questions == 4
    # retrieval is the same for both, so are the refusals before the model runs (the off-topic question)
    assert g.base_answered == g.adapter_answered and 2 <= g.base_answered <= 3
    assert 0 <= g.base_grounded <= 3 and 0 <= g.adapter_grounded <= 3
