"""Soft prompts (peft prompt tuning, issue 19): trained by the SFT loop, checked, served by the embedded backend
beside LoRA adapters, and refused for vLLM. Real peft and torch on a tiny Llama with SmolLM2's tokenizer."""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from typer.testing import CliRunner

from citeline.contracts.generator import ChatMessage, GenerationRequest
from citeline.errors import AdapterError, GenerationError, TrainingError
from citeline.facade import Citeline
from citeline.generation.local import EmbeddedBackend
from citeline.lora.evaluation import evaluate_adapter, heldout_examples, load_rules
from citeline.lora.manifest import ADAPTER_CONFIG, ADAPTER_WEIGHTS, MANIFEST, AdapterManifest, Problem, preflight
from citeline.lora.registry import AdapterRegistry
from citeline.lora.rollout import ReplicaClient
from citeline.lora.soft_prompt import SOFT_PROMPT, SOFT_PROMPT_TENSOR
from citeline.lora.training import TRAINING_FILE, TrainingConfig, train_adapter
from citeline.settings import GenerationSettings, Settings
from tests.conftest import REPO
from tests.support.adapters import make_adapter
from tests.support.tiny_models import build_tiny_llama
from tests.unit.test_adapter_data import chat, write

pytestmark = pytest.mark.integration

TOKENS = 8
PROMPT = (ChatMessage("user", "What is the policy on refunds for case 12?"),)


@pytest.fixture(scope="module")
def tiny_base(smollm2_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_llama(smollm2_dir, tmp_path_factory.mktemp("tiny") / "tiny-smollm2")


@pytest.fixture(scope="module")
def trained(tiny_base: Path, tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("soft")
    data = write(root, [chat(i) for i in range(22)])
    config = TrainingConfig(team="support", data=data, output=root / "soft", base_model=tiny_base, epochs=3,
                            batch_size=4, save_every=2, threads=2, virtual_tokens=TOKENS, learning_rate=0.1)
    return train_adapter(config)


@pytest.fixture(scope="module")
def lora(tiny_base: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_adapter(tiny_base, tmp_path_factory.mktemp("lora") / "lora", seed=5)


@pytest.fixture
def backend(tiny_base: Path, tmp_path: Path):
    b = EmbeddedBackend(EmbeddedBackend.Config(model=str(tiny_base), engine="transformers"), home=tmp_path,
                        generation=GenerationSettings())
    yield b
    b.close()


def answer(backend: EmbeddedBackend, model: str | None) -> str:
    """Greedy; stream and generate must agree."""
    request = GenerationRequest(PROMPT, model=model, max_tokens=10, temperature=0.0)
    text = backend.generate(request).text
    assert "".join(backend.stream(request)) == text
    return text


def copy(folder: Path, dest: Path) -> Path:
    shutil.copytree(folder, dest)
    return dest


def test_training_writes_a_peft_prompt_tuning_folder_whose_heldout_loss_drops(trained, tiny_base):
    out = trained.output
    config = json.loads((out / ADAPTER_CONFIG).read_text())
    assert config["peft_type"] == "PROMPT_TUNING" and config["num_virtual_tokens"] == TOKENS
    assert config["token_dim"] == 32 and config["task_type"] == "CAUSAL_LM"
    from safetensors.torch import load_file

    assert {k: list(v.shape) for k, v in load_file(str(out / ADAPTER_WEIGHTS)).items()} == {
        SOFT_PROMPT_TENSOR: [TOKENS, 32]}
    manifest = AdapterManifest.read(out)
    assert manifest is not None and manifest.kind == SOFT_PROMPT and manifest.virtual_tokens == TOKENS
    assert manifest.rank == 0 and manifest.target_modules == ()  # it has neither: the manifest does not pretend
    assert trained.heldout_loss < trained.base_heldout_loss
    assert manifest.metrics["heldout_loss"] < manifest.metrics["base_heldout_loss"]
    record = json.loads((out / TRAINING_FILE).read_text())
    assert record["virtual_tokens"] == TOKENS and "rank" not in record and record["heldout_lines"]
    assert len(heldout_examples(out)) == 3  # `adapter eval` finds the held-out split
    assert preflight(out, base_model_dir=tiny_base, max_rank=8) == []
    assert not (out / "checkpoints").exists()


def test_an_interrupted_soft_prompt_resumes_to_the_same_result(tiny_base, tmp_path):
    import threading

    import torch
    from safetensors.torch import load_file

    data = write(tmp_path, [chat(i) for i in range(22)])

    def run(out: Path, **kw):
        return train_adapter(TrainingConfig(team="support", data=data, output=out, base_model=tiny_base, epochs=2,
                                            save_every=2, threads=2, virtual_tokens=4, learning_rate=0.1), **kw)

    straight = run(tmp_path / "straight")
    stop = threading.Event()
    first = run(tmp_path / "resumed", stop=stop, progress=lambda p: p.step == 3 and stop.set())
    assert not first.completed and first.step == 3
    with pytest.raises(TrainingError, match="another training run.*virtual_tokens"):  # not continued as another run
        train_adapter(TrainingConfig(team="support", data=data, output=tmp_path / "resumed", base_model=tiny_base,
                                     epochs=2, threads=2, virtual_tokens=5, learning_rate=0.1))
    second = run(tmp_path / "resumed")
    assert second.completed and second.resumed_from == 3
    assert second.losses == pytest.approx(straight.losses, rel=1e-4)
    a, b = (load_file(str(tmp_path / n / ADAPTER_WEIGHTS))[SOFT_PROMPT_TENSOR] for n in ("resumed", "straight"))
    assert torch.allclose(a, b, atol=1e-5)


def test_a_lying_manifest_is_refused(trained, tmp_path):
    folder = copy(trained.output, tmp_path / "soft")
    body = json.loads((folder / MANIFEST).read_text())
    (folder / MANIFEST).write_text(json.dumps({**body, "rank": 8, "target_modules": ["q_proj"]}))
    with pytest.raises(ValueError, match='"rank" is 8, it must be 0'):
        AdapterManifest.read(folder)


def test_the_backend_serves_a_soft_prompt_beside_a_lora_each_as_if_alone(backend, trained, lora):
    base = answer(backend, None)
    backend.load_adapter("soft", trained.output)
    soft = answer(backend, "soft")
    assert soft != base
    assert answer(backend, None) == base
    backend.unload_adapter("soft")
    backend.load_adapter("lora", lora)
    alone = answer(backend, "lora")
    assert alone != base
    backend.load_adapter("soft", trained.output)  # both loaded: each its own output, the base untouched
    assert backend.models() == [backend.base_model, "lora", "soft"]
    assert (answer(backend, "soft"), answer(backend, "lora"), answer(backend, None)) == (soft, alone, base)
    backend.unload_adapter("lora")  # the last LoRA goes: peft's wrapper goes, the soft prompt stays
    assert (answer(backend, "soft"), answer(backend, None)) == (soft, base)
    backend.load_adapter("lora", lora)
    assert answer(backend, "lora") == alone
    backend.unload_adapter("soft")
    backend.unload_adapter("lora")
    assert backend.models() == [backend.base_model] and answer(backend, None) == base
    with pytest.raises(GenerationError, match="unknown model or adapter 'soft'"):
        answer(backend, "soft")


def test_the_virtual_tokens_count_against_the_context(backend, trained):
    backend.load_adapter("soft", trained.output)
    prompt_ids = backend._require_hf().chat_ids([{"role": m.role, "content": m.content} for m in PROMPT])
    room = backend._require_hf().max_positions - len(prompt_ids)
    assert backend._prepare(GenerationRequest(PROMPT, model="soft", max_tokens=room)).max_new_tokens == room - TOKENS


def test_evaluation_runs_on_a_soft_prompt(backend, trained):
    backend.load_adapter("soft", trained.output)
    report = evaluate_adapter(trained.output, load_rules(REPO / "examples" / "adapters" / "support" / "rules.toml"),
                              backend, adapter_name="soft", examples=heldout_examples(trained.output), max_tokens=6)
    assert report.examples == 3 and {"adapter", "base", "baseline"} <= set(report.scores)
    assert report.scores["adapter"].outputs != report.scores["base"].outputs


def _other_base(folder: Path, tmp_path: Path, *, keep_manifest: bool) -> Path:
    """The soft prompt as it would be for a base of hidden size 48: token_dim and tensor of that width."""
    import torch
    from safetensors.torch import save_file

    other = copy(folder, tmp_path / "other")
    config = json.loads((other / ADAPTER_CONFIG).read_text())
    (other / ADAPTER_CONFIG).write_text(json.dumps({**config, "token_dim": 48}))
    save_file({SOFT_PROMPT_TENSOR: torch.zeros(TOKENS, 48)}, str(other / ADAPTER_WEIGHTS))
    if keep_manifest:
        body = json.loads((other / MANIFEST).read_text())
        (other / MANIFEST).write_text(json.dumps({**body, "base_fingerprint": "0" * 64, "base_model": "wider"}))
    else:
        (other / MANIFEST).unlink()
    return other


@pytest.mark.parametrize("keep_manifest", [True, False])
def test_a_soft_prompt_for_another_base_is_refused_by_preflight_and_the_backend(trained, tiny_base, backend,
                                                                                  tmp_path, keep_manifest):
    other = _other_base(trained.output, tmp_path, keep_manifest=keep_manifest)
    problems = preflight(other, base_model_dir=tiny_base, max_rank=8)
    assert problems and all(p.kind == Problem.BASE_MISMATCH for p in problems)
    assert any("token_dim is 48, the base model's hidden size is 32" in p.message for p in problems)
    if keep_manifest:
        assert any("trained on 'wider'" in p.message for p in problems)
    with pytest.raises(GenerationError, match="does not fit base model.*hidden size is 32"):
        backend.load_adapter("other", other)
    assert backend.models() == [backend.base_model]


def _forge(folder: Path, how: str) -> None:
    import torch
    from safetensors.torch import save_file

    weights, config = folder / ADAPTER_WEIGHTS, json.loads((folder / ADAPTER_CONFIG).read_text())
    if how == "truncated":
        weights.write_bytes(weights.read_bytes()[:-16])
    elif how == "longer":  # 9 virtual tokens where the config says 8
        save_file({SOFT_PROMPT_TENSOR: torch.zeros(TOKENS + 1, 32)}, str(weights))
    elif how == "extra tensor":
        save_file({SOFT_PROMPT_TENSOR: torch.zeros(TOKENS, 32), "lm_head.weight": torch.zeros(4, 32)}, str(weights))
    elif how == "renamed":
        save_file({"embeddings": torch.zeros(TOKENS, 32)}, str(weights))
    elif how == "huge count":
        (folder / ADAPTER_CONFIG).write_text(json.dumps({**config, "num_virtual_tokens": 100_000}))
    elif how == "header lies":  # a header whose shape claims more bytes than the file holds
        raw = weights.read_bytes()
        n = int.from_bytes(raw[:8], "little")
        header = raw[8:8 + n].replace(b"[8,32]", b"[9,32]")
        weights.write_bytes(len(header).to_bytes(8, "little") + header + raw[8 + n:])


@pytest.mark.parametrize(("how", "kind"), [
    ("truncated", Problem.WEIGHTS_MISSING), ("longer", Problem.WEIGHTS_MISMATCH),
    ("extra tensor", Problem.WEIGHTS_MISMATCH), ("renamed", Problem.WEIGHTS_MISSING),
    ("huge count", Problem.BAD_CONFIG), ("header lies", Problem.WEIGHTS_MISSING)])
def test_forged_or_truncated_soft_prompts_are_refused(trained, tiny_base, backend, tmp_path, how, kind):
    folder = copy(trained.output, tmp_path / "forged")
    _forge(folder, how)
    problems = preflight(folder, base_model_dir=tiny_base, max_rank=8)
    assert kind in {p.kind for p in problems}, problems
    with pytest.raises(GenerationError, match="soft prompt 'forged'"):
        backend.load_adapter("forged", folder)
    assert backend.models() == [backend.base_model]


@pytest.mark.slow
def test_registration_refuses_a_soft_prompt_for_vllm_and_takes_it_for_the_embedded_backend(db, trained, tiny_base,
                                                                                            tmp_path):
    registry = AdapterRegistry(db, tmp_path / "store")
    with pytest.raises(AdapterError, match="vLLM does not serve soft prompts.*train a LoRA adapter"):
        registry.register(trained.output, team="support", name="support", base_model_dir=tiny_base, max_rank=8,
                          actor="test")
    assert registry.list() == [] and not any((tmp_path / "store").glob("*"))
    adapter, new = registry.register(trained.output, team="support", name="support", base_model_dir=tiny_base,
                                     max_rank=8, actor="test", serves_soft_prompts=True)
    assert new and adapter.rank == 0 and adapter.target_modules == ()
    assert preflight(adapter.path, base_model_dir=tiny_base, max_rank=8) == []  # the stored copy too


def test_the_vllm_client_never_sends_a_soft_prompt(trained):
    client = ReplicaClient("http://127.0.0.1:9")  # nothing listens: a request would fail as unreachable
    with pytest.raises(AdapterError, match="was not sent to http://127.0.0.1:9: it is a soft prompt. vLLM does not"):
        client.load_adapter("support-abc", trained.output)
    client.close()


@pytest.mark.slow
@pytest.mark.parametrize("deployment", [
    {"adapters": {"replicas": ["http://127.0.0.1:9"]}},
    {"generation": {"backend": "openai", "options": {"base_url": "http://127.0.0.1:9/v1", "model": "m"}}},
    {}])
def test_a_vllm_deployment_refuses_to_register_a_soft_prompt(pg_url, embedder, trained, tiny_base, tmp_path,
                                                             deployment):
    config = tmp_path / "citeline.toml"
    config.write_text(f'home = "{tmp_path / "home"}"\n')
    namespace = f"s_{uuid.uuid4().hex[:10]}"
    adapters = {"base_model_path": str(tiny_base), **deployment.get("adapters", {})}
    generation = deployment.get("generation", {"backend": "embedded", "options": {
        "model": str(tiny_base), "engine": "transformers"}})
    settings = Settings.load(config, database_url=pg_url, database={"namespace": namespace}, generation=generation,
                             adapters=adapters)
    try:
        with Citeline(settings, embedder=embedder) as cl:
            if deployment:
                with pytest.raises(AdapterError, match="vLLM does not serve soft prompts"):
                    cl.adapters.register(trained.output, team="support", actor="test")
                assert cl.adapters.list() == []
            else:  # the embedded backend: registered, promoted (loaded in process), and it answers
                adapter = cl.adapters.register(trained.output, team="support", actor="test")
                assert adapter.rank == 0 and adapter.target_modules == ()
                cl.adapters.promote(adapter.served_name, actor="test", force=True, drain_s=0)
                (host,) = cl.adapters.hosts()
                assert adapter.served_name in host.models()
                assert answer(host, adapter.served_name) != answer(host, None)
    finally:
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(namespace)))


def test_cli_trains_a_soft_prompt_and_refuses_start_from(tiny_base, tmp_path):
    from citeline.cli import app

    data = write(tmp_path, [chat(i) for i in range(22)])
    runner = CliRunner()
    out = tmp_path / "soft"
    result = runner.invoke(app, ["adapter", "train", "--team", "support", "--data", str(data), "--base",
                                 str(tiny_base), "--output", str(out), "--epochs", "1", "--method", "prompt",
                                 "--virtual-tokens", "4", "--init-text", "Answer in bullets.", "--json"])
    assert result.exit_code == 0, result.output
    config = json.loads((out / ADAPTER_CONFIG).read_text())
    assert (config["peft_type"], config["num_virtual_tokens"]) == ("PROMPT_TUNING", 4)
    assert config["prompt_tuning_init_text"] == "Answer in bullets."
    record = json.loads((out / TRAINING_FILE).read_text())
    assert record["learning_rate"] == 3e-2  # the soft prompt's own default, not LoRA's 1e-3
    refused = runner.invoke(app, ["adapter", "train", "--team", "support", "--data", str(data), "--base",
                                  str(tiny_base), "--output", str(tmp_path / "x"), "--method", "prompt",
                                  "--start-from", "active"])
    assert refused.exit_code != 0 and "--start-from is for LoRA adapters" in refused.output
