"""A team's answer format: rules read from a TOML file, checked on an answer's text, and ROUGE-L similarity.

The rules file is described in :mod:`citeline.lora.evaluation`; :func:`load_rules` reads it with errors that
name the rule and the fix.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from citeline.errors import ConfigError

__all__ = ["FormatRule", "RuleKind", "TeamRules", "format_failures", "load_rules", "rouge_l"]

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
