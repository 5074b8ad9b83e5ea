"""The embedded generation backend with the real SmolLM2-135M-Instruct and real peft LoRA adapters.

The GGUF → safetensors conversion runs once per machine into a cache shared across test runs
(``$CITELINE_TEST_MODELS``, default ``~/.cache/citeline-test-models``); everything else uses that folder.
"""

from __future__ import annotations

import inspect
import json
import os
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from citeline import plugins
from citeline.contracts.generator import AdapterHost, ChatMessage, GenerationBackend, GenerationRequest
from citeline.errors import ConfigError, GenerationError
from citeline.generation.local import BASE_MODEL_NAME, EmbeddedBackend, ensure_base_model, packaged_gguf
from citeline.generation.local.decoding import until_stop
from citeline.settings import GenerationSettings

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MAX_TOKENS = 16
ADAPTER_TOKENS = 8  # enough to tell a perturbed adapter from the base model
PROMPT = "Name three colours of the rainbow."


def _cache_home() -> Path:
    return Path(os.environ.get("CITELINE_TEST_MODELS", Path.home() / ".cache" / "citeline-test-models"))


def embedded(**options: object) -> EmbeddedBackend:
    """The backend as the facade builds it: its own options, the shared model cache, the core generation settings."""
    return EmbeddedBackend(EmbeddedBackend.Config(**options), home=_cache_home(), generation=GenerationSettings())


@pytest.fixture(scope="module")
def model_dir() -> Path:
    return ensure_base_model(_cache_home())


@pytest.fixture(scope="module")
def backend(model_dir: Path) -> Iterator[EmbeddedBackend]:
    b = embedded()
    yield b
    b.close()


@pytest.fixture(scope="module")
def hf_backend(model_dir: Path) -> Iterator[EmbeddedBackend]:
    """The same model on the transformers engine (what adapter requests and non-GGUF models use)."""
    b = embedded(engine="transformers")
    yield b
    b.close()


@pytest.fixture(scope="module", params=["llamacpp", "transformers"])
def either(request: pytest.FixtureRequest, backend: EmbeddedBackend, hf_backend: EmbeddedBackend) -> EmbeddedBackend:
    return backend if request.param == "llamacpp" else hf_backend


@pytest.fixture(scope="module")
def adapter_dir(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A LoRA adapter (r=8 on q_proj, v_proj) whose lora_B is random, so it changes the first tokens."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True)
    torch.manual_seed(0)  # lora_A's initialisation
    tuned = get_peft_model(base, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"],
                                            task_type="CAUSAL_LM"))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in tuned.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.4)  # 0.1 can leave 8 tokens alike
    dest = tmp_path_factory.mktemp("adapter") / "team-a"
    tuned.save_pretrained(dest)
    return dest


def ask(question: str = PROMPT, model: str | None = None, max_tokens: int = MAX_TOKENS,
        stop: tuple[str, ...] = ()) -> GenerationRequest:
    return GenerationRequest(messages=(ChatMessage("user", question),), model=model, max_tokens=max_tokens,
                             stop=stop)


def drain(stream: Iterator[str]) -> tuple[str, str]:
    """A stream's text and the finish reason its generator returns."""
    pieces = []
    while True:
        try:
            pieces.append(next(stream))
        except StopIteration as done:
            return "".join(pieces), done.value


def short(model: str | None = None) -> GenerationRequest:
    """The adapter tests' request: the same prompt and length for the base model and every adapter."""
    return ask(model=model, max_tokens=ADAPTER_TOKENS)


def broken_copy(adapter_dir: Path, dest: Path, **config_changes: object) -> Path:
    shutil.copytree(adapter_dir, dest)
    config_file = dest / "adapter_config.json"
    config = json.loads(config_file.read_text())
    config.update(config_changes)
    config_file.write_text(json.dumps(config))
    return dest


# -- the base model ---------------------------------------------------------------------------------


def test_conversion_makes_a_standard_folder_that_loads_fast_and_generates(model_dir: Path) -> None:
    assert model_dir == _cache_home().resolve() / "models" / BASE_MODEL_NAME
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        assert (model_dir / name).is_file(), name
    config = json.loads((model_dir / "config.json").read_text())
    assert "quantization_config" not in config
    assert config["rope_theta"] == 100000.0  # for the older transformers vLLM bundles
    assert "<|im_start|>" in json.loads((model_dir / "tokenizer_config.json").read_text())["chat_template"]
    assert ensure_base_model(_cache_home()) == model_dir  # reused, not converted again

    started = time.monotonic()
    fresh = embedded(model=str(model_dir))
    try:
        assert time.monotonic() - started < 30  # the GGUF path takes ~25 s before dequantizing anything
        assert fresh.engine == "transformers"  # auto: a Hugging Face folder is not a GGUF file
        answer = fresh.generate(ask("What is the capital of France?"))
        assert "Paris" in answer.text
        assert answer.finish_reason == "stop"
        assert answer.model == BASE_MODEL_NAME
    finally:
        fresh.close()
    with pytest.raises(GenerationError, match="closed"):
        fresh.generate(ask())


def test_incomplete_conversion_folder_is_refused(tmp_path: Path) -> None:
    (tmp_path / "models" / BASE_MODEL_NAME).mkdir(parents=True)
    with pytest.raises(GenerationError, match="not a complete conversion"):
        ensure_base_model(tmp_path)


def test_registered_and_implements_the_contract(backend: EmbeddedBackend) -> None:
    assert plugins.load(plugins.GENERATORS, "embedded") is EmbeddedBackend
    assert isinstance(backend, GenerationBackend)
    assert isinstance(backend, AdapterHost)
    for protocol in (GenerationBackend, AdapterHost):  # same parameters as the contract, not just the names
        for name, member in vars(protocol).items():
            if callable(member) and not name.startswith("_"):
                assert list(inspect.signature(getattr(type(backend), name)).parameters) == \
                    list(inspect.signature(member).parameters), name
    assert backend.name == "embedded"
    assert backend.engine == "llamacpp"  # auto: xllamacpp is installed and the model is the packaged GGUF
    assert backend.base_model == BASE_MODEL_NAME
    assert backend.models() == [BASE_MODEL_NAME]


def test_generate_equals_the_concatenated_stream(backend: EmbeddedBackend) -> None:
    for question in (PROMPT, "Write one sentence about the sea, with an emoji."):
        whole = backend.generate(ask(question))
        pieces = list(backend.stream(ask(question)))
        assert len(pieces) > 1
        assert "".join(pieces) == whole.text
        assert whole.text.strip()
    abandoned = backend.stream(ask())
    assert next(abandoned)
    abandoned.close()  # a client that went away: the model is free again at once (else the next call times out)
    cut = backend.generate(ask("Count from one to one hundred in words.", max_tokens=5))
    assert cut.completion_tokens == 5 and cut.finish_reason == "length"


def test_token_counts_use_the_model_tokenizer(backend: EmbeddedBackend, model_dir: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    texts = ("hello world", "Zürich — 東京 ✓ [1] citations", "", "  two  spaces\n\n\ttab <|im_end|> end",
             "Evidence [3] «Deploy process» <https://wiki.example.com/deploy>: run `make rollback` — 5 min.",
             (Path(__file__).parents[2] / "README.md").read_text()[:4000])
    for text in texts:  # the llama.cpp engine tokenizes the GGUF itself: it must agree with the HF tokenizer
        assert backend.count_tokens(text) == len(tokenizer(text, add_special_tokens=False)["input_ids"])
    answer = backend.generate(ask())
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": PROMPT}], add_generation_prompt=True,
                                           tokenize=True, return_dict=True)["input_ids"]
    assert answer.prompt_tokens == len(prompt)
    assert 1 <= answer.completion_tokens <= MAX_TOKENS


def test_unknown_adapter_is_refused_before_streaming(backend: EmbeddedBackend) -> None:
    with pytest.raises(GenerationError, match="no-such-team"):
        backend.generate(ask(model="no-such-team"))
    with pytest.raises(GenerationError, match="no-such-team"):
        backend.stream(ask(model="no-such-team"))  # at the call, not at the first delta
    with pytest.raises(GenerationError, match="no-such-team"):
        backend.unload_adapter("no-such-team")


# -- adapters ---------------------------------------------------------------------------------------


def test_adapter_selected_per_request(backend: EmbeddedBackend, adapter_dir: Path) -> None:
    assert backend.adapters() == {}
    base = backend.generate(short()).text
    backend.load_adapter("team-a", adapter_dir)
    try:
        assert backend.models() == [BASE_MODEL_NAME, "team-a"]
        assert backend.adapters() == {"team-a": adapter_dir}
        tuned = backend.generate(short("team-a"))
        assert tuned.model == "team-a"
        assert tuned.text != base
        assert "".join(backend.stream(short("team-a"))) == tuned.text
        assert backend.generate(short()).text == base  # adapters off for the base model
        assert backend.generate(short(BASE_MODEL_NAME)).text == base
        assert backend.generate(short("team-a")).text == tuned.text

        backend.load_adapter("team-a", adapter_dir)  # same name, same folder: nothing to do
        with pytest.raises(GenerationError, match="already loaded"):
            backend.load_adapter("team-a", adapter_dir.parent)
        _concurrent_requests_keep_their_models(backend, {None: base, "team-a": tuned.text})
    finally:
        backend.unload_adapter("team-a")
    assert backend.models() == [BASE_MODEL_NAME]
    assert backend.adapters() == {}
    with pytest.raises(GenerationError, match="team-a"):
        backend.generate(short("team-a"))
    assert backend.generate(short()).text == base

    backend.load_adapter("team-a-v2", adapter_dir)  # loading again after the last one went away
    try:
        assert backend.generate(short("team-a-v2")).text == tuned.text
    finally:
        backend.unload_adapter("team-a-v2")


def _concurrent_requests_keep_their_models(backend: EmbeddedBackend, expected: dict[str | None, str]) -> None:
    results: dict[int, str] = {}
    models = [None, "team-a", None, "team-a"]

    def worker(i: int) -> None:
        results[i] = "".join(backend.stream(short(models[i])))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(models))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert {i: expected[m] for i, m in enumerate(models)} == results


def test_broken_adapters_are_refused_and_loaded_ones_keep_working(
    backend: EmbeddedBackend, adapter_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from peft import PeftModel

    assert backend.adapters() == {}
    base = backend.generate(short()).text

    def fail_inside_peft(*args: object, **kwargs: object) -> None:
        raise RuntimeError("peft failed")

    # a failure inside peft on the very first adapter: the model must come back unwrapped
    with monkeypatch.context() as patched:
        patched.setattr(PeftModel, "load_adapter", fail_inside_peft)
        with pytest.raises(GenerationError, match=r"'first'.*could not be loaded.*peft failed"):
            backend.load_adapter("first", adapter_dir)
    assert backend.models() == [BASE_MODEL_NAME]
    assert not isinstance(backend._hf.model, PeftModel)
    assert backend.generate(short()).text == base

    backend.load_adapter("good", adapter_dir)
    try:
        tuned = backend.generate(short("good")).text
        cases = _broken_adapters(adapter_dir, tmp_path)
        for name, (path, why) in cases.items():
            with pytest.raises(GenerationError, match=why) as caught:
                backend.load_adapter(name, path)
            assert repr(name) in str(caught.value)
            assert backend.models() == [BASE_MODEL_NAME, "good"]
        with monkeypatch.context() as patched:  # rolled back inside peft this time, "good" untouched
            patched.setattr(PeftModel, "load_adapter", fail_inside_peft)
            with pytest.raises(GenerationError, match=r"'second'.*could not be loaded"):
                backend.load_adapter("second", adapter_dir)
        assert backend.models() == [BASE_MODEL_NAME, "good"]
        assert backend.generate(short("good")).text == tuned
        assert backend.generate(short()).text == base
    finally:
        backend.unload_adapter("good")


def _broken_adapters(adapter_dir: Path, tmp_path: Path) -> dict[str, tuple[Path, str]]:
    """Adapters the shape check (citeline.lora.manifest's, the one registration runs) or the folder checks refuse."""
    from safetensors.torch import load_file, save_file

    no_weights = broken_copy(adapter_dir, tmp_path / "no-weights")
    (no_weights / "adapter_model.safetensors").unlink()
    not_an_adapter = tmp_path / "plain-folder"
    not_an_adapter.mkdir()
    stray = broken_copy(adapter_dir, tmp_path / "stray")  # a whole layer beside the LoRA matrices
    tensors = load_file(stray / "adapter_model.safetensors")
    tensors["base_model.model.lm_head.weight"] = tensors[next(iter(tensors))].clone()
    save_file(tensors, stray / "adapter_model.safetensors")
    truncated = broken_copy(adapter_dir, tmp_path / "truncated")
    data = (truncated / "adapter_model.safetensors").read_bytes()
    (truncated / "adapter_model.safetensors").write_bytes(data[: len(data) // 2])
    return {
        "wrong-rank": (broken_copy(adapter_dir, tmp_path / "wrong-rank", r=16), "does not fit"),
        # weights of r=8 where rank_pattern says 4: refused since the two shape checks became one
        "pattern": (broken_copy(adapter_dir, tmp_path / "pattern", rank_pattern={"q_proj": 4}),
                    r"needs \[(4, 576|576, 4)\] \(r=4\)"),
        "stray": (stray, "unexpected tensor"),
        "truncated": (truncated, "cannot read"),
        "no-weights": (no_weights, "adapter_model.safetensors"),
        "missing": (tmp_path / "gone", "does not exist"),  # the model server answers 404 for this one
        "a-file": (adapter_dir / "adapter_config.json", "not a folder"),
        "plain": (not_an_adapter, "not a PEFT adapter"),
        "extra": (broken_copy(adapter_dir, tmp_path / "extra", target_modules=["q_proj", "v_proj", "k_proj"]),
                  "lacks weights for target modules"),
    }


# -- engines, stop sequences, finish reasons ------------------------------------------------------------


def test_engine_setting_is_checked(model_dir: Path) -> None:
    with pytest.raises(ConfigError, match="llamacpp runs GGUF files.*engine = \"transformers\""):
        embedded(engine="llamacpp", model=str(model_dir))
    gguf = embedded(model=str(packaged_gguf()))  # a .gguf file: auto
    try:
        assert gguf.engine == "llamacpp"
        assert gguf.base_model == packaged_gguf().stem
        assert gguf.generate(ask("What is the capital of France?", max_tokens=8)).text
        with pytest.raises(GenerationError, match="need a Hugging Face model folder"):
            gguf.load_adapter("team-a", model_dir)  # adapters need the transformers model, not a GGUF file
    finally:
        gguf.close()


def test_stop_sequences_and_finish_reasons(either: EmbeddedBackend) -> None:
    question = "List the days of the week, one per line."
    whole = either.generate(ask(question, max_tokens=48))
    assert whole.finish_reason in ("stop", "length")
    words = whole.text.split()
    assert len(words) >= 4, whole.text
    stop = words[2][:3]  # part of the third word: the answer ends just before it
    cut = either.generate(ask(question, max_tokens=48, stop=("NEVER-SEEN", stop)))
    assert cut.text == whole.text[:whole.text.find(stop)]
    assert cut.finish_reason == "stop"
    assert cut.completion_tokens < whole.completion_tokens
    assert drain(either.stream(ask(question, max_tokens=48, stop=(stop,)))) == (cut.text, "stop")
    unmatched = either.generate(ask(question, max_tokens=48, stop=("NEVER-SEEN",)))
    assert (unmatched.text, unmatched.finish_reason) == (whole.text, whole.finish_reason)

    short_answer = either.generate(ask("Count from one to one hundred in words.", max_tokens=5))
    assert (short_answer.completion_tokens, short_answer.finish_reason) == (5, "length")
    assert drain(either.stream(ask("Count from one to one hundred in words.", max_tokens=5))) == \
        (short_answer.text, "length")
    done = either.generate(ask("What is the capital of France?", max_tokens=200))
    assert done.finish_reason == "stop" and done.completion_tokens < 200  # the model's own end of answer


def test_until_stop_holds_back_what_may_begin_a_stop_string() -> None:
    def run(pieces: list[str], stops: tuple[str, ...]) -> tuple[list[str], str]:
        stats = type("S", (), {"finish_reason": "length"})()
        out = list(until_stop(iter(pieces), stops, stats))  # type: ignore[arg-type]
        return out, stats.finish_reason

    assert run(["Hel", "lo Wo", "rld"], ("o W",)) == (["Hel", "l"], "stop")
    assert run(["ab", "cx", "y", "z!"], ("xyz",)) == (["ab", "c"], "stop")
    assert run(["ab", "cx", "y"], ("xyz",)) == (["ab", "c", "xy"], "length")  # a partial match at the end is text
    assert run(["Sources:"], ("Sources:",)) == ([], "stop")
    assert run(["a", "b"], ()) == (["a", "b"], "length")


def test_adapters_load_transformers_lazily_and_the_base_stays_on_llamacpp(model_dir: Path, adapter_dir: Path) -> None:
    fresh = embedded()
    try:
        assert fresh.engine == "llamacpp"
        assert fresh._hf is None  # no torch weights until an adapter is used
        base = fresh.generate(short())
        fresh.load_adapter("team-a", adapter_dir)
        assert fresh._hf is not None
        tuned = fresh.generate(short("team-a"))
        assert tuned.model == "team-a" and tuned.text and tuned.text != base.text
        assert drain(fresh.stream(short("team-a"))) == (tuned.text, tuned.finish_reason)
        stopped = fresh.generate(GenerationRequest(messages=short().messages, model="team-a", max_tokens=8,
                                                   stop=(tuned.text.split()[-1],)))
        assert stopped.finish_reason == "stop" and tuned.text.startswith(stopped.text)
        assert fresh.generate(short()).text == base.text  # the base model still answers from llama.cpp
    finally:
        fresh.close()
