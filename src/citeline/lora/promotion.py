"""The promotion policy: when a registered adapter may become its team's active one.

:func:`evaluation_metrics` reads the numbers of ``citeline adapter eval`` (``citeline_eval.json``) that are
recorded with an adapter when it is registered; :func:`promotion_problems` says why an adapter may not be
promoted (empty: it may). :func:`citeline.lora.rollout.promote` refuses a promotion with problems unless
forced.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from citeline.errors import AdapterError
from citeline.lora.evaluation import EvalReport, decide_promotion

__all__ = ["evaluation_metrics", "promotion_problems"]


class Candidate(Protocol):
    """What the policy reads of a registered adapter (:class:`citeline.lora.registry.AdapterVersion`)."""

    @property
    def served_name(self) -> str: ...
    @property
    def path(self) -> Path: ...
    @property
    def metrics(self) -> Mapping[str, Any]: ...


def evaluation_metrics(adapter_dir: Path) -> dict[str, float]:
    """The numbers of ``citeline adapter eval`` (``citeline_eval.json``) that the promotion gate reads."""
    try:
        report = EvalReport.read(adapter_dir)
    except (ValueError, KeyError, TypeError) as exc:
        raise AdapterError(f"{adapter_dir}/citeline_eval.json is malformed ({exc!r}): run `citeline adapter eval` "
                           "again") from exc
    if report is None:
        return {}
    scores = report.scores
    out = {"format_compliance": scores["adapter"].compliance, "baseline_format_compliance":
           scores["baseline"].compliance, "base_format_compliance": scores["base"].compliance,
           "similarity": scores["adapter"].similarity, "baseline_similarity": scores["baseline"].similarity}
    if "current" in scores:
        current = scores["current"]
        out.update(current_format_compliance=current.compliance, current_similarity=current.similarity)
    if report.grounding is not None:
        out.update(grounding=report.grounding.adapter_share, baseline_grounding=report.grounding.base_share)
        if report.grounding.current_share is not None:
            out.update(current_grounding=report.grounding.current_share)
    return {k: round(float(v), 4) for k, v in out.items()}


def promotion_problems(adapter: Candidate, active: Candidate | None = None) -> list[str]:
    """Why an adapter may not become its team's active one (empty: it may).

    When the registered folder carries ``citeline adapter eval``'s report (``citeline_eval.json``), the
    evaluation's own rule decides (:func:`citeline.lora.evaluation.decide_promotion`: beat the prompting
    baseline on format compliance, beat the team's current adapter, with grounding measured and not worse).
    Otherwise the metrics recorded with the adapter must show the same: compliance above the baseline's,
    grounding (when given) not worse.

    ``active``: the team's active adapter. An adapter that would replace one must have been evaluated against
    that very version (the report names it), so an adapter that does worse than what serves is refused.
    """
    report = EvalReport.read(adapter.path)
    replacing = active.served_name if active is not None and active.served_name != adapter.served_name else None
    rerun = f"`citeline adapter eval {adapter.served_name} --rules RULES --grounding --as USER`"
    if report is not None:
        problems = []
        if replacing and report.current != replacing:
            against = f"against {report.current}" if report.current else "without the team's active adapter"
            problems.append(f"it was evaluated {against}, not against {replacing}, the team's active adapter: run "
                            f"{rerun} (it compares with the active adapter)")
        decision = decide_promotion(report)
        return problems + ([] if decision.promote else list(decision.reasons))
    m = adapter.metrics
    have = {k for k in ("format_compliance", "baseline_format_compliance") if isinstance(m.get(k), int | float)}
    if len(have) < 2:
        return [f"{adapter.served_name} has no evaluation results (format_compliance and "
                "baseline_format_compliance in its manifest): run `citeline adapter eval` first, or --force"]
    problems = []
    if replacing:
        problems.append(f"it has no evaluation against {replacing}, the team's active adapter (only metrics in its "
                        f"manifest): run {rerun}, or --force")
    if float(m["format_compliance"]) <= float(m["baseline_format_compliance"]):
        problems.append(f"format compliance {float(m['format_compliance']):.3f} does not beat the prompting "
                        f"baseline's {float(m['baseline_format_compliance']):.3f}")
    grounding, baseline = m.get("grounding"), m.get("baseline_grounding")
    if isinstance(grounding, int | float) and isinstance(baseline, int | float) and float(grounding) < float(baseline):
        problems.append(f"grounding {float(grounding):.3f} is worse than the base model's {float(baseline):.3f}")
    return problems
