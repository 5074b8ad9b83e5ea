"""Format rules, similarity, the promotion gate and the eval report file (no model needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from citeline.errors import ConfigError
from citeline.lora.evaluation import (
    EvalReport,
    Grounding,
    decide_promotion,
    format_failures,
    load_rules,
    question_of,
    rouge_l,
    score_outputs,
)
from tests.conftest import REPO

pytestmark = pytest.mark.unit

RULES = load_rules(REPO / "examples" / "adapters" / "support" / "rules.toml")
GOOD = "- Returns are free within 30 days [1].\n- The robot must be complete [1].\nNext step: open a Return ticket."


def test_the_support_rules_pass_the_house_format_and_name_each_failure():
    assert RULES.team == "support" and RULES.system_prompt and "Next step" in RULES.system_prompt
    assert format_failures(GOOD, RULES.rules) == []
    assert format_failures("Returns are free within 30 days [1].", RULES.rules) == ["bullet points",
                                                                                  "ends with a next step"]
    assert format_failures(GOOD.replace("[1]", ""), RULES.rules) == ["cites evidence"]
    assert format_failures(GOOD + " word" * 150, RULES.rules) == ["under 150 words"]
    assert format_failures(GOOD + "\nThanks for asking!", RULES.rules) == ["ends with a next step"]


def test_rule_file_errors_name_the_rule(tmp_path: Path):
    bad = tmp_path / "rules.toml"
    bad.write_text('[[rules]]\nname = "x"\nkind = "shouting"\n')
    with pytest.raises(ConfigError, match="'x' has kind 'shouting'"):
        load_rules(bad)
    bad.write_text('[[rules]]\nname = "y"\nkind = "regex"\npattern = "(unclosed"\n')
    with pytest.raises(ConfigError, match="'y': bad pattern"):
        load_rules(bad)
    bad.write_text('[[rules]]\nname = "z"\nkind = "max_words"\n')
    with pytest.raises(ConfigError, match="'z' .* needs a value"):
        load_rules(bad)
    bad.write_text('team = "t"\n')
    with pytest.raises(ConfigError, match="no \\[\\[rules\\]\\]"):
        load_rules(bad)


def test_rouge_l():
    assert rouge_l("a b c d", "a b c d") == 1.0
    assert rouge_l("", "a") == 0.0
    assert rouge_l("a x b y", "a b") == pytest.approx(2 * 0.5 * 1.0 / 1.5)


def test_question_of_a_grounded_prompt():
    assert question_of("Evidence:\n\n[1] T\n<<<\nx\n>>>\n\nQuestion: how long is the warranty?") == \
        "how long is the warranty?"
    assert question_of("just a question") == "just a question"


def report(adapter: float, baseline: float, grounding: Grounding | None) -> EvalReport:
    scores = {"adapter": score_outputs("adapter", [GOOD] * int(adapter * 10) + ["x"] * (10 - int(adapter * 10)),
                                       [GOOD] * 10, RULES.rules),
              "baseline": score_outputs("baseline", [GOOD] * int(baseline * 10) + ["x"] * (10 - int(baseline * 10)),
                                        [GOOD] * 10, RULES.rules),
              "base": score_outputs("base", ["x"] * 10, [GOOD] * 10, RULES.rules)}
    return EvalReport("/a", "support", 10, tuple(r.name for r in RULES.rules), scores, grounding, 1.0)


def test_promotion_needs_to_beat_the_baseline_and_keep_grounding():
    kept = Grounding(10, 8, 6, 8, 6)
    ok = decide_promotion(report(0.8, 0.3, kept))
    assert ok.promote and not ok.forced and "beats the prompting baseline" in ok.reasons[0]

    tie = decide_promotion(report(0.3, 0.3, kept))
    assert not tie.promote and "does not beat" in tie.reasons[0]
    forced = decide_promotion(report(0.3, 0.3, kept), force=True)
    assert forced.promote and forced.forced and forced.reasons[-1] == "promoted anyway: forced"

    worse = decide_promotion(report(0.8, 0.3, Grounding(10, 8, 6, 8, 3)))
    assert not worse.promote and "drop from 75%" in worse.reasons[-1]
    assert decide_promotion(report(0.8, 0.3, Grounding(10, 8, 6, 8, 5)), grounding_tolerance=0.2).promote

    unmeasured = decide_promotion(report(0.8, 0.3, None))
    assert not unmeasured.promote and "--grounding" in unmeasured.reasons[-1]
    assert decide_promotion(report(0.8, 0.3, None), require_grounding=False).promote


def test_the_report_file_round_trips(tmp_path: Path):
    original = report(0.8, 0.3, Grounding(10, 8, 6, 7, 6))
    original.write(tmp_path)
    again = EvalReport.read(tmp_path)
    assert again is not None
    assert again.scores["adapter"].compliance == 0.8 and again.grounding == original.grounding
    assert again.scores["adapter"].outputs == original.scores["adapter"].outputs
    assert EvalReport.read(tmp_path / "nothing") is None


def with_current(adapter: EvalReport, compliance: float, similarity: float) -> EvalReport:
    """``adapter`` as if it had been compared with a current adapter of these scores."""
    from dataclasses import replace

    from citeline.lora.evaluation import ModelScores

    current = ModelScores("current", compliance, {}, similarity, ())
    return replace(adapter, scores={**adapter.scores, "current": current}, current="support-0123456789ab")


def test_a_new_adapter_must_beat_the_current_one_on_format_and_references_without_grounding_worse():
    new = report(0.8, 0.3, Grounding(10, 8, 2, 8, 6, 8, 6))
    similarity = new.scores["adapter"].similarity
    better = decide_promotion(with_current(new, 0.7, similarity - 0.1))
    assert better.promote and any("beats the team's current adapter support-0123456789ab" in r for r in better.reasons)
    assert decide_promotion(with_current(new, 0.8, similarity - 0.01)).promote  # equal format, closer references
    assert decide_promotion(with_current(new, 0.7, similarity)).promote  # better format, the same references

    for compliance, sim in ((0.8, similarity), (0.9, similarity - 0.1), (0.7, similarity + 0.01)):
        refused = decide_promotion(with_current(new, compliance, sim))  # a tie, or worse on one of the two
        assert not refused.promote, (compliance, sim)
        assert any(r.startswith("does not beat the team's current adapter") and "keep support-" in r
                   for r in refused.reasons)
    forced = decide_promotion(with_current(new, 0.9, similarity), force=True)
    assert forced.promote and forced.forced

    less_grounded = replace_grounding(with_current(new, 0.7, 0.0), Grounding(10, 8, 2, 8, 5, 8, 7))
    decision = decide_promotion(less_grounded)  # better than the base's 25%, worse than the current's 88%
    assert not decision.promote and "drop from 88% with the current adapter" in decision.reasons[-1]


def replace_grounding(r: EvalReport, g: Grounding) -> EvalReport:
    from dataclasses import replace

    return replace(r, grounding=g)


def test_the_report_keeps_the_current_adapter_it_was_compared_with(tmp_path: Path):
    original = replace_grounding(with_current(report(0.8, 0.3, None), 0.5, 0.2), Grounding(4, 3, 1, 3, 3, 3, 2))
    original.write(tmp_path)
    again = EvalReport.read(tmp_path)
    assert again is not None and again.current == "support-0123456789ab"
    assert again.scores["current"].compliance == 0.5 and again.grounding == original.grounding
    assert again.grounding is not None and again.grounding.current_share == 2 / 3
    legacy = report(0.8, 0.3, Grounding(10, 8, 6, 7, 6))  # a report from before the comparison existed
    legacy.write(tmp_path)
    old = EvalReport.read(tmp_path)
    assert old is not None and old.current is None and old.grounding is not None
    assert old.grounding.current_share is None
