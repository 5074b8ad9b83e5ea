"""A contract test suite every generation backend runs (built-in or third-party).

Inherit :class:`GeneratorContract` in a pytest test class and provide a ``backend`` fixture (built as
``cls(config, home=..., generation=...)``; a class-scoped fixture keeps a real model loaded once)::

    from citeline.testing.generators import GeneratorContract

    class TestMyBackend(GeneratorContract):
        @pytest.fixture(scope="class")
        def backend(self):
            return MyBackend(MyBackend.Config(), home=tmp_home, generation=GenerationSettings())

The suite makes four short generations (``max_tokens`` :attr:`GeneratorContract.max_tokens`), so it stays
cheap on a CPU model. It checks the promises of :mod:`citeline.contracts.generator`. Nothing here imports
pytest.
"""

from __future__ import annotations

from typing import Any

from citeline.contracts.generator import ChatMessage, Evidence, Generation, GenerationBackend, GenerationRequest

__all__ = ["GeneratorContract", "sample_request"]

QUESTION = "How do I roll back a bad deploy?"
_EVIDENCE = (
    Evidence(1, 101, 11, "Deploy runbook", None, "Run `acme-deploy rollback fleet` to redeploy the previous release. "
             "It takes under two minutes.", 0.9),
    Evidence(2, 102, 12, "Deploy calendar", None, "Deploys happen Monday to Thursday.", 0.5),
)


def sample_request(max_tokens: int = 24, stop: tuple[str, ...] = ()) -> GenerationRequest:
    """A grounded request as the prompt builder makes it: rules, numbered evidence, the question."""
    evidence = "\n\n".join(f"[{e.n}] {e.title}\n{e.text}" for e in _EVIDENCE)
    return GenerationRequest(
        messages=(ChatMessage("system", "Answer only from the evidence and cite it as [n]."),
                  ChatMessage("user", f"Evidence:\n{evidence}\n\nQuestion: {QUESTION}")),
        max_tokens=max_tokens, temperature=0.0, stop=stop, question=QUESTION, evidence=_EVIDENCE,
        user_question=QUESTION)


def _drain(stream: Any) -> tuple[str, Any]:
    parts: list[str] = []
    while True:
        try:
            parts.append(next(stream))
        except StopIteration as end:
            return "".join(parts), end.value


class GeneratorContract:
    """Checks the promises of :mod:`citeline.contracts.generator`. Needs a ``backend`` fixture."""

    max_tokens = 24

    def test_is_a_backend(self, backend: Any) -> None:
        assert isinstance(backend, GenerationBackend), "implements citeline.contracts.generator.GenerationBackend"
        assert isinstance(backend.name, str) and backend.name, "name is a non-empty string"
        assert isinstance(backend.base_model, str) and backend.base_model, "base_model is a non-empty string"

    def test_models_list_the_base_model_first(self, backend: Any) -> None:
        models = backend.models()
        assert isinstance(models, list) and models and models[0] == backend.base_model, \
            f"models() starts with base_model ({backend.base_model!r}), got {models!r}"

    def test_count_tokens(self, backend: Any) -> None:
        short, longer = "Deploys happen Monday.", "Deploys happen Monday to Thursday, never on Fridays."
        n = backend.count_tokens(short)
        assert isinstance(n, int) and n > 0, "count_tokens gives a positive int for a sentence"
        assert backend.count_tokens(short) == n, "count_tokens is deterministic"
        assert backend.count_tokens(longer) > n, "more text, more tokens"
        assert backend.count_tokens(short + " " + longer) >= n, "count_tokens is monotone"
        assert backend.count_tokens("") >= 0

    def test_generate_and_stream_agree(self, backend: Any) -> None:
        request = sample_request(self.max_tokens)
        out = backend.generate(request)
        assert isinstance(out, Generation), "generate() returns a Generation"
        assert isinstance(out.text, str) and out.text.strip(), "a grounded question gets a non-empty answer"
        assert out.finish_reason in ("stop", "length"), f"finish_reason is stop or length, not {out.finish_reason!r}"
        assert out.model == backend.base_model, "model None is answered by the base model"
        assert 0 < out.completion_tokens <= request.max_tokens, "completion_tokens within max_tokens"
        assert out.prompt_tokens > 0, "prompt_tokens counted"
        text, finish = _drain(iter(backend.stream(request)))
        assert text == out.text, "the stream's deltas join to what generate() returns (temperature 0)"
        assert finish in (None, out.finish_reason), "a stream returns generate()'s finish reason (or None)"

    def test_stop_sequences_end_the_answer(self, backend: Any) -> None:
        full = backend.generate(sample_request(self.max_tokens)).text
        words = full.split()
        if len(words) < 3:
            raise AssertionError(f"the answer {full!r} is too short to test stop sequences")
        stop = " " + words[len(words) // 2]
        out = backend.generate(sample_request(self.max_tokens, stop=(stop,)))
        assert stop not in out.text, f"the stop sequence {stop!r} does not appear in {out.text!r}"
        assert full.startswith(out.text), "the answer ends before the stop sequence, as it was up to there"
        assert out.finish_reason == "stop", "a stop sequence ends with finish_reason stop"
