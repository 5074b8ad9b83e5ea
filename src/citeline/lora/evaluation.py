"""Evaluating a team's adapter before deploy, against the base model, the prompting baseline and the team's
current adapter.

On the held-out examples (the split :mod:`citeline.lora.training` recorded, recomputed from the same data
file, or a separate file), the same prompts go through three or four models with the embedded backend's
decoding (the one the server uses):

- **adapter**: the base model with the team's LoRA adapter, the prompt as in the data;
- **base**: the base model alone, the same prompt;
- **prompting baseline**: the base model alone with the team's best system prompt in place of the data's
  system message (what the team could get without training anything);
- **current** (when the team has an active adapter): the adapter the new one would replace.

Each output is scored for *format compliance* (the team's :class:`FormatRule` set, all must pass; per-rule
pass rates too) and *similarity* to the reference reply (ROUGE-L F1 on words). :func:`grounding_check`
asks real questions through :class:`citeline.answers.assistant.Assistant` with and without the adapter and counts
the answers whose citations all point at evidence that was shown. :func:`decide_promotion` turns an
:class:`EvalReport` into a :class:`PromotionDecision` with its reasons: an adapter that does not beat the
prompting baseline on compliance, does not beat the current adapter (compliance and similarity to the
held-out references, e.g. users' corrections), or whose answers are less often grounded, is refused unless
forced. The format rules themselves live in :mod:`citeline.lora.format_rules`.

A team's rules live in a TOML file::

    team = "support"
    system_prompt = "system_prompt.txt"       # the baseline's system prompt, relative to this file

    [[rules]]
    name = "bullet points"
    kind = "bullets"                          # regex | forbid | max_words | min_words | bullets | last_line
    min = 2
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from citeline.contracts.generator import ChatMessage, GenerationBackend, GenerationRequest
from citeline.errors import TrainingError
from citeline.lora.data import Example, data_hash, read_examples
from citeline.lora.format_rules import FormatRule, RuleKind, TeamRules, format_failures, load_rules, rouge_l
from citeline.lora.manifest import AdapterManifest
from citeline.lora.training import TRAINING_FILE

if TYPE_CHECKING:
    from citeline.answers.assistant import Assistant
    from citeline.domain import Principal

__all__ = ["EVAL_FILE", "EvalReport", "FormatRule", "Grounding", "ModelScores", "PromotionDecision", "RuleKind",
           "TeamRules", "decide_promotion", "evaluate_adapter", "format_failures", "grounding_check",
           "heldout_examples", "load_rules", "question_of", "rouge_l", "score_outputs"]

EVAL_FILE = "citeline_eval.json"


@dataclass(frozen=True)
class ModelScores:
    name: str  # adapter | base | baseline | current (the team's active adapter, when compared)
    compliance: float  # share of outputs passing every rule
    per_rule: dict[str, float]
    similarity: float  # mean ROUGE-L F1 against the references
    outputs: tuple[str, ...] = field(default_factory=tuple, repr=False)


def score_outputs(name: str, outputs: Sequence[str], references: Sequence[str],
                  rules: Sequence[FormatRule]) -> ModelScores:
    n = max(len(outputs), 1)
    per_rule = {r.name: sum(1 for o in outputs if r.passes(o)) / n for r in rules}
    compliance = sum(1 for o in outputs if not format_failures(o, rules)) / n
    similarity = sum(rouge_l(o, ref) for o, ref in zip(outputs, references, strict=True)) / n
    return ModelScores(name, round(compliance, 4), {k: round(v, 4) for k, v in per_rule.items()},
                       round(similarity, 4), tuple(outputs))


@dataclass(frozen=True)
class Grounding:
    """Answers (the model was called) whose citations are non-empty and all name evidence that was shown.

    ``current_*``: the same for the team's active adapter, when the evaluation compared with one.
    """

    questions: int
    base_answered: int
    base_grounded: int
    adapter_answered: int
    adapter_grounded: int
    current_answered: int | None = None
    current_grounded: int | None = None

    @property
    def base_share(self) -> float:
        return self.base_grounded / self.base_answered if self.base_answered else 0.0

    @property
    def adapter_share(self) -> float:
        return self.adapter_grounded / self.adapter_answered if self.adapter_answered else 0.0

    @property
    def current_share(self) -> float | None:
        if self.current_answered is None or self.current_grounded is None:
            return None
        return self.current_grounded / self.current_answered if self.current_answered else 0.0


@dataclass(frozen=True)
class EvalReport:
    adapter: str  # the adapter folder
    team: str
    examples: int
    rules: tuple[str, ...]
    scores: dict[str, ModelScores]  # adapter, base, baseline
    grounding: Grounding | None
    seconds: float
    prompts: tuple[str, ...] = field(default_factory=tuple, repr=False)  # the last user message of each
    references: tuple[str, ...] = field(default_factory=tuple, repr=False)
    current: str | None = None  # the served name of the team's active adapter it was compared with

    def as_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"adapter": self.adapter, "team": self.team, "current": self.current,
                                "examples": self.examples, "rules": list(self.rules), "seconds": round(self.seconds, 1)}
        body["scores"] = {k: {**asdict(v), "outputs": list(v.outputs)} for k, v in self.scores.items()}
        body["grounding"] = None if self.grounding is None else {
            **asdict(self.grounding), "base_share": round(self.grounding.base_share, 4),
            "adapter_share": round(self.grounding.adapter_share, 4),
            "current_share": None if self.grounding.current_share is None else round(self.grounding.current_share, 4)}
        body["prompts"], body["references"] = list(self.prompts), list(self.references)
        return body

    def write(self, adapter_dir: Path) -> Path:
        path = Path(adapter_dir) / EVAL_FILE
        path.write_text(json.dumps(self.as_dict(), indent=2, ensure_ascii=False) + "\n")
        return path

    @classmethod
    def read(cls, adapter_dir: Path) -> EvalReport | None:
        """The folder's last evaluation, or ``None`` when it was never evaluated."""
        path = Path(adapter_dir) / EVAL_FILE
        if not path.is_file():
            return None
        raw = json.loads(path.read_text())
        scores = {k: ModelScores(v["name"], v["compliance"], v["per_rule"], v["similarity"], tuple(v["outputs"]))
                  for k, v in raw["scores"].items()}
        g = raw.get("grounding")
        grounding = None if g is None else Grounding(g["questions"], g["base_answered"], g["base_grounded"],
                                                     g["adapter_answered"], g["adapter_grounded"],
                                                     g.get("current_answered"), g.get("current_grounded"))
        return cls(raw["adapter"], raw["team"], raw["examples"], tuple(raw["rules"]), scores, grounding,
                   raw["seconds"], tuple(raw.get("prompts", ())), tuple(raw.get("references", ())),
                   raw.get("current"))


@dataclass(frozen=True)
class PromotionDecision:
    promote: bool
    forced: bool
    reasons: tuple[str, ...]


def decide_promotion(report: EvalReport, *, force: bool = False, require_grounding: bool = True,
                     grounding_tolerance: float = 0.0) -> PromotionDecision:
    """Promote only an adapter that beats the prompting baseline on compliance, beats the team's current
    adapter (when the report compared with one) and keeps answers grounded.

    Beating the current adapter: format compliance and similarity to the held-out references (the corrected
    answers, for data built from feedback) both at least the current adapter's, and one of them higher.
    Grounding: the share of grounded answers must not drop below the base model's, nor below the current
    adapter's (``grounding_tolerance`` allows that much less).
    """
    ok, reasons = True, []
    for good, reason in (_beats_baseline(report), *_beats_current(report), _keeps_grounding(report, require_grounding,
                                                                                              grounding_tolerance)):
        ok = ok and good
        if reason:
            reasons.append(reason)
    if not ok and force:
        reasons.append("promoted anyway: forced")
    return PromotionDecision(ok or force, force and not ok, tuple(reasons))


def _beats_baseline(report: EvalReport) -> tuple[bool, str]:
    adapter, baseline = report.scores["adapter"], report.scores["baseline"]
    if adapter.compliance > baseline.compliance:
        return True, (f"format compliance {adapter.compliance:.0%} beats the prompting baseline's "
                      f"{baseline.compliance:.0%}")
    return False, (f"format compliance {adapter.compliance:.0%} does not beat the prompting baseline's "
                   f"{baseline.compliance:.0%}: improve the data or keep using the system prompt")


def _beats_current(report: EvalReport) -> list[tuple[bool, str]]:
    current = report.scores.get("current")
    if current is None:
        return []
    adapter, name = report.scores["adapter"], report.current or "the current adapter"
    numbers = (f"format compliance {adapter.compliance:.0%} vs {current.compliance:.0%}, similarity to the held-out "
               f"references {adapter.similarity:.3f} vs {current.similarity:.3f}")
    not_worse = adapter.compliance >= current.compliance and adapter.similarity >= current.similarity
    if not_worse and (adapter.compliance > current.compliance or adapter.similarity > current.similarity):
        return [(True, f"beats the team's current adapter {name}: {numbers}")]
    return [(False, f"does not beat the team's current adapter {name} ({numbers}): keep {name}")]


def _keeps_grounding(report: EvalReport, required: bool, tolerance: float) -> tuple[bool, str]:
    g = report.grounding
    if g is None:
        if required:
            return False, "grounding was not measured: run `citeline adapter eval` with --grounding"
        return True, ""
    if g.adapter_share + tolerance < g.base_share:
        return False, (f"grounded answers drop from {g.base_share:.0%} without the adapter to {g.adapter_share:.0%} "
                       "with it: its answers cite shown evidence less often")
    current = g.current_share
    if current is not None and g.adapter_share + tolerance < current:
        return False, (f"grounded answers drop from {current:.0%} with the current adapter {report.current} to "
                       f"{g.adapter_share:.0%}: its answers cite shown evidence less often")
    also = "" if current is None else f", {current:.0%} with the current adapter"
    return True, f"grounded answers {g.adapter_share:.0%} with the adapter, {g.base_share:.0%} without{also}"


# -- running the evaluation --------------------------------------------------------------------------


def heldout_examples(adapter_dir: Path, *, data: Path | None = None) -> list[Example]:
    """The held-out examples the adapter was not trained on.

    With ``data``: every example of that file. Without: the lines of the training data that
    ``citeline_training.json`` records as held out (the file must still hash as it did at training).
    """
    if data is not None:
        examples, problems, _ = read_examples(data)
        if problems:
            raise TrainingError(f"{data} has problems: " + "; ".join(str(p) for p in problems[:5]))
        return examples
    training = _training_record(adapter_dir)
    source = Path(training["data"])
    if not source.is_file():
        raise TrainingError(f"the training data {source} is gone: pass --heldout-file with evaluation examples")
    if data_hash(source) != training["data_hash"]:
        raise TrainingError(f"{source} changed since {adapter_dir} was trained on it, so its held-out split is not "
                            "held out any more: pass --heldout-file with examples the adapter has not seen")
    held = set(training["heldout_lines"])
    examples, _, _ = read_examples(source)
    return [e for e in examples if e.line in held]


def _training_record(adapter_dir: Path) -> dict[str, Any]:
    path = Path(adapter_dir) / TRAINING_FILE
    if not path.is_file():
        raise TrainingError(f"{adapter_dir} has no {TRAINING_FILE} (it was not trained by citeline): pass "
                            "--heldout-file with evaluation examples")
    return json.loads(path.read_text())


def _with_system(messages: Sequence[ChatMessage], system: str | None) -> tuple[ChatMessage, ...]:
    if system is None:
        return tuple(messages)
    rest = [m for m in messages if m.role != "system"]
    return (ChatMessage("system", system), *rest)


def evaluate_adapter(adapter_dir: Path, rules: TeamRules, backend: GenerationBackend, *, adapter_name: str,
                     examples: Sequence[Example], max_tokens: int = 256, current: str | None = None,
                     progress: Callable[[int, int], None] | None = None) -> EvalReport:
    """Generate with adapter, base and prompting baseline on ``examples`` and score them (no grounding).

    ``current``: also generate with the team's active adapter (its served name), so the decision can require
    the new adapter to beat it. ``backend`` must already serve ``adapter_name`` and ``current`` (load them with
    ``backend.load_adapter``).
    """
    for name in (adapter_name, current):
        if name is not None and name not in backend.models():
            raise TrainingError(f"the backend does not serve {name!r}: load the adapter first")
    started = time.monotonic()
    outputs: dict[str, list[str]] = {"adapter": [], "base": [], "baseline": [], **({"current": []} if current else {})}
    for i, example in enumerate(examples):
        runs = {"adapter": (example.prompt, adapter_name), "base": (example.prompt, None),
                "baseline": (_with_system(example.prompt, rules.system_prompt), None)}
        if current is not None:
            runs["current"] = (example.prompt, current)
        for key, (messages, model) in runs.items():
            request = GenerationRequest(tuple(messages), model=model, max_tokens=max_tokens, temperature=0.0)
            outputs[key].append(backend.generate(request).text.strip())
        if progress is not None:
            progress(i + 1, len(examples))
    refs = [e.reference for e in examples]
    scores = {k: score_outputs(k, v, refs, rules.rules) for k, v in outputs.items()}
    manifest = AdapterManifest.read(adapter_dir)
    team = rules.team or (manifest.team if manifest and manifest.team else "")
    prompts = tuple(next((m.content for m in reversed(e.prompt) if m.role == "user"), "") for e in examples)
    return EvalReport(str(Path(adapter_dir).resolve()), team, len(examples), tuple(r.name for r in rules.rules),
                      scores, None, time.monotonic() - started, prompts, tuple(refs), current)


def question_of(prompt: str) -> str:
    """The question of a grounded user message (its ``Question:`` line), else the whole message."""
    found = re.findall(r"(?m)^Question:\s*(.+)$", prompt)
    return found[-1].strip() if found else prompt.strip()


def grounding_check(assistant: Assistant, principal: Principal, questions: Sequence[str], *,
                    adapter_name: str, current: str | None = None) -> Grounding:
    """Ask each question without and with the adapter (and with ``current``, the team's active adapter, when
    given); count the grounded answers of each."""
    models = {"base": None, "adapter": adapter_name, **({"current": current} if current else {})}
    counts = {key: [0, 0] for key in models}
    for question in questions:
        for key, model in models.items():
            answer = assistant.ask(question, principal, model=model)
            if "generate_ms" not in answer.latency_ms:
                continue  # refused before the model was called (weak evidence): says nothing about the model
            counts[key][0] += 1
            if answer.citations and answer.invalid_citations == 0:
                counts[key][1] += 1
    extra = (counts["current"][0], counts["current"][1]) if current else (None, None)
    return Grounding(len(questions), counts["base"][0], counts["base"][1], counts["adapter"][0],
                     counts["adapter"][1], *extra)
