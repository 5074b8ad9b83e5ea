"""Evaluating a team's adapter before deploy, against the base model and the prompting baseline.

On the held-out examples (the split :mod:`citeline.lora.training` recorded, recomputed from the same data
file, or a separate file), the same prompts go through three models with the embedded backend's decoding
(the one the server uses):

- **adapter**: the base model with the team's LoRA adapter, the prompt as in the data;
- **base**: the base model alone, the same prompt;
- **prompting baseline**: the base model alone with the team's best system prompt in place of the data's
  system message (what the team could get without training anything).

Each output is scored for *format compliance* (the team's :class:`FormatRule` set, all must pass; per-rule
pass rates too) and *similarity* to the reference reply (ROUGE-L F1 on words). :func:`grounding_check`
asks real questions through :class:`citeline.answers.assistant.Assistant` with and without the adapter and counts
the answers whose citations all point at evidence that was shown. :func:`decide_promotion` turns an
:class:`EvalReport` into a :class:`PromotionDecision` with its reasons: an adapter that does not beat the
prompting baseline on compliance, or whose answers are less often grounded, is refused unless forced.

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
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from citeline.contracts.generator import ChatMessage, GenerationBackend, GenerationRequest
from citeline.errors import ConfigError, TrainingError
from citeline.lora.data import Example, data_hash, read_examples
from citeline.lora.manifest import AdapterManifest
from citeline.lora.training import TRAINING_FILE

if TYPE_CHECKING:
    from citeline.answers.assistant import Assistant
    from citeline.domain import Principal

__all__ = ["EVAL_FILE", "EvalReport", "FormatRule", "Grounding", "ModelScores", "PromotionDecision", "RuleKind",
           "TeamRules", "decide_promotion", "evaluate_adapter", "format_failures", "grounding_check",
           "heldout_examples", "load_rules", "question_of", "rouge_l", "score_outputs"]

EVAL_FILE = "citeline_eval.json"
_BULLET = re.compile(r"^\s*(?:[-*•]|\d+[.)])\s+\S")


class RuleKind(StrEnum):
    REGEX = "regex"  # the pattern must match somewhere
    FORBID = "forbid"  # the pattern must not match anywhere
    MAX_WORDS = "max_words"
    MIN_WORDS = "min_words"
    BULLETS = "bullets"  # at least ``min`` (and at most ``max``, if set) bullet lines
    LAST_LINE = "last_line"  # the last non-empty line matches the pattern


@dataclass(frozen=True)
class FormatRule:
    name: str
    kind: RuleKind
    pattern: str | None = None
    min: int | None = None
    max: int | None = None

    def passes(self, text: str) -> bool:
        words = len(text.split())
        lines = [line for line in text.splitlines() if line.strip()]
        match self.kind:
            case RuleKind.REGEX:
                return re.search(self.pattern or "", text, re.M) is not None
            case RuleKind.FORBID:
                return re.search(self.pattern or "", text, re.M) is None
            case RuleKind.MAX_WORDS:
                return words <= (self.max or 0)
            case RuleKind.MIN_WORDS:
                return words >= (self.min or 0)
            case RuleKind.BULLETS:
                n = sum(1 for line in lines if _BULLET.match(line))
                return n >= (self.min or 1) and (self.max is None or n <= self.max)
            case RuleKind.LAST_LINE:
                return bool(lines) and re.search(self.pattern or "", lines[-1].strip()) is not None
        return False  # pragma: no cover (every kind is handled)


@dataclass(frozen=True)
class TeamRules:
    team: str
    rules: tuple[FormatRule, ...]
    system_prompt: str | None  # the team's best system prompt: the prompting baseline
    path: Path | None = None


def load_rules(path: Path) -> TeamRules:
    """Read a team's rules file (see the module docstring); errors name the rule and the fix."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read the rules file {path}: {exc}") from exc
    rules = []
    for i, r in enumerate(raw.get("rules") or [], 1):
        name = str(r.get("name") or f"rule {i}")
        try:
            kind = RuleKind(r.get("kind"))
        except ValueError:
            raise ConfigError(f"{path}: rule {name!r} has kind {r.get('kind')!r}; use one of "
                              f"{', '.join(k.value for k in RuleKind)}") from None
        value = r.get("value")
        rule = FormatRule(name, kind, pattern=r.get("pattern"),
                          min=r.get("min", value if kind == RuleKind.MIN_WORDS else None),
                          max=r.get("max", value if kind == RuleKind.MAX_WORDS else None))
        if kind in (RuleKind.REGEX, RuleKind.FORBID, RuleKind.LAST_LINE):
            try:
                re.compile(rule.pattern or "")
            except re.error as exc:
                raise ConfigError(f"{path}: rule {name!r}: bad pattern {rule.pattern!r}: {exc}") from exc
            if not rule.pattern:
                raise ConfigError(f"{path}: rule {name!r} ({kind}) needs a pattern")
        if kind in (RuleKind.MAX_WORDS, RuleKind.MIN_WORDS) and (rule.max if kind == RuleKind.MAX_WORDS
                                                                 else rule.min) is None:
            raise ConfigError(f"{path}: rule {name!r} ({kind}) needs a value")
        rules.append(rule)
    if not rules:
        raise ConfigError(f"{path} declares no [[rules]]: a team's format needs at least one rule to evaluate")
    prompt = raw.get("system_prompt")
    if prompt and (path.parent / prompt).is_file():
        prompt = (path.parent / prompt).read_text().strip()
    return TeamRules(str(raw.get("team") or ""), tuple(rules), prompt or None, path)


def format_failures(text: str, rules: Sequence[FormatRule]) -> list[str]:
    """The names of the rules ``text`` breaks (empty: compliant)."""
    return [r.name for r in rules if not r.passes(text)]


def rouge_l(candidate: str, reference: str) -> float:
    """ROUGE-L F1 over lower-cased word tokens (longest common subsequence)."""
    a, b = re.findall(r"\w+", candidate.lower()), re.findall(r"\w+", reference.lower())
    if not a or not b:
        return 0.0
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b, 1):
            cur.append(prev[j - 1] + 1 if x == y else max(prev[j], cur[j - 1]))
        prev = cur
    lcs = prev[-1]
    if not lcs:
        return 0.0
    precision, recall = lcs / len(a), lcs / len(b)
    return 2 * precision * recall / (precision + recall)


@dataclass(frozen=True)
class ModelScores:
    name: str  # adapter | base | baseline
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
    """Answers (the model was called) whose citations are non-empty and all name evidence that was shown."""

    questions: int
    base_answered: int
    base_grounded: int
    adapter_answered: int
    adapter_grounded: int

    @property
    def base_share(self) -> float:
        return self.base_grounded / self.base_answered if self.base_answered else 0.0

    @property
    def adapter_share(self) -> float:
        return self.adapter_grounded / self.adapter_answered if self.adapter_answered else 0.0


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

    def as_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"adapter": self.adapter, "team": self.team, "examples": self.examples,
                                "rules": list(self.rules), "seconds": round(self.seconds, 1)}
        body["scores"] = {k: {**asdict(v), "outputs": list(v.outputs)} for k, v in self.scores.items()}
        body["grounding"] = None if self.grounding is None else {
            **asdict(self.grounding), "base_share": round(self.grounding.base_share, 4),
            "adapter_share": round(self.grounding.adapter_share, 4)}
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
                                                     g["adapter_answered"], g["adapter_grounded"])
        return cls(raw["adapter"], raw["team"], raw["examples"], tuple(raw["rules"]), scores, grounding,
                   raw["seconds"], tuple(raw.get("prompts", ())), tuple(raw.get("references", ())))


@dataclass(frozen=True)
class PromotionDecision:
    promote: bool
    forced: bool
    reasons: tuple[str, ...]


def decide_promotion(report: EvalReport, *, force: bool = False, require_grounding: bool = True,
                     grounding_tolerance: float = 0.0) -> PromotionDecision:
    """Promote only an adapter that beats the prompting baseline on compliance and keeps answers grounded."""
    adapter, baseline = report.scores["adapter"], report.scores["baseline"]
    ok, reasons = True, []
    if adapter.compliance > baseline.compliance:
        reasons.append(f"format compliance {adapter.compliance:.0%} beats the prompting baseline's "
                       f"{baseline.compliance:.0%}")
    else:
        ok = False
        reasons.append(f"format compliance {adapter.compliance:.0%} does not beat the prompting baseline's "
                       f"{baseline.compliance:.0%}: improve the data or keep using the system prompt")
    g = report.grounding
    if g is None:
        if require_grounding:
            ok = False
            reasons.append("grounding was not measured: run `citeline adapter eval` with --grounding")
    elif g.adapter_share + grounding_tolerance < g.base_share:
        ok = False
        reasons.append(f"grounded answers drop from {g.base_share:.0%} without the adapter to {g.adapter_share:.0%} "
                       "with it: its answers cite shown evidence less often")
    else:
        reasons.append(f"grounded answers {g.adapter_share:.0%} with the adapter, {g.base_share:.0%} without")
    if not ok and force:
        reasons.append("promoted anyway: forced")
    return PromotionDecision(ok or force, force and not ok, tuple(reasons))


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
                     examples: Sequence[Example], max_tokens: int = 256,
                     progress: Callable[[int, int], None] | None = None) -> EvalReport:
    """Generate with adapter, base and prompting baseline on ``examples`` and score them (no grounding).

    ``backend`` must already serve ``adapter_name`` (load it with ``backend.load_adapter``).
    """
    if adapter_name not in backend.models():
        raise TrainingError(f"the backend does not serve {adapter_name!r}: load the adapter first")
    started = time.monotonic()
    outputs: dict[str, list[str]] = {"adapter": [], "base": [], "baseline": []}
    for i, example in enumerate(examples):
        runs = {"adapter": (example.prompt, adapter_name), "base": (example.prompt, None),
                "baseline": (_with_system(example.prompt, rules.system_prompt), None)}
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
                      scores, None, time.monotonic() - started, prompts, tuple(refs))


def question_of(prompt: str) -> str:
    """The question of a grounded user message (its ``Question:`` line), else the whole message."""
    found = re.findall(r"(?m)^Question:\s*(.+)$", prompt)
    return found[-1].strip() if found else prompt.strip()


def grounding_check(assistant: Assistant, principal: Principal, questions: Sequence[str], *,
                    adapter_name: str) -> Grounding:
    """Ask each question without and with the adapter; count the grounded answers of each."""
    counts = {"base": [0, 0], "adapter": [0, 0]}
    for question in questions:
        for key, model in (("base", None), ("adapter", adapter_name)):
            answer = assistant.ask(question, principal, model=model)
            if "generate_ms" not in answer.latency_ms:
                continue  # refused before the model was called (weak evidence): says nothing about the model
            counts[key][0] += 1
            if answer.citations and answer.invalid_citations == 0:
                counts[key][1] += 1
    return Grounding(len(questions), counts["base"][0], counts["base"][1], counts["adapter"][0],
                     counts["adapter"][1])
