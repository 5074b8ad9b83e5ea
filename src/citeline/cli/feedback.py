"""``citeline feedback report`` and ``citeline adapter data from-feedback``: users' feedback on answers, per
team and model, and as a team adapter's training data (the work: ``cl.feedback`` and
:func:`citeline.workflows.feedback_training_data`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from citeline import workflows
from citeline.cli._common import ConfigOption, JsonOption, PlainTable, console, opened, prepare, print_json, reported

__all__ = ["app", "data_app"]

app = typer.Typer(no_args_is_help=True)
data_app = typer.Typer(no_args_is_help=True)


@app.command("report")
def report(
    team: Annotated[str | None, typer.Option("--team", help="this team's answers only", show_default=False)] = None,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Up and down votes and corrections per team and model (an adapter's served name holds its version)."""
    with opened(config) as cl:
        rows = cl.feedback.report(team=team)
    if as_json:
        print_json({"rows": [r.as_dict() for r in rows]})
        return
    if not rows:
        console.print("no feedback yet" + (f" for team {team}" if team else ""), markup=False, highlight=False)
        return
    table = PlainTable("team", "model", "up", "down", "up share", "corrected", "last", title="feedback on answers",
                       title_justify="left")
    for r in rows:
        table.add_row(r.team or "(none)", r.model, str(r.up), str(r.down), f"{r.up_share:.0%}", str(r.corrected),
                      r.last_at.strftime("%Y-%m-%d %H:%M") if r.last_at else "-")
    console.print(table)


@data_app.command("from-feedback")
def from_feedback(
    team: Annotated[str, typer.Option("--team", help="the team whose answers' feedback becomes data")],
    output: Annotated[Path, typer.Option("--output", "-o", help="folder for sft.jsonl, sft.heldout.jsonl, "
                                         "pairs.jsonl, pairs.heldout.jsonl (and drafts.jsonl)")] = Path(
        "feedback-data"),
    base: Annotated[Path | None, typer.Option("--base", help="local base model folder whose tokenizer counts "
                                              "tokens (default: the built-in SmolLM2)", show_default=False)] = None,
    max_tokens: Annotated[int, typer.Option("--max-tokens", min=16, help="longest example, in the base model's "
                                            "tokens")] = 1024,
    heldout: Annotated[float, typer.Option("--heldout", min=0.0, max=0.9, help="share held out")] = 0.1,
    seed: Annotated[int, typer.Option("--seed", help="seed of the split (pass the same to adapter train)")] = 0,
    draft_with: Annotated[str | None, typer.Option("--draft-with", metavar="URL", help="an OpenAI-compatible "
                                                   "server whose model drafts corrections of down-voted answers, "
                                                   "written to drafts.jsonl for review", show_default=False)] = None,
    draft_model: Annotated[str | None, typer.Option("--draft-model", help="the model to draft with (default: "
                                                    "the server's first)", show_default=False)] = None,
    draft_key: Annotated[str | None, typer.Option("--draft-key", envvar="CITELINE_DRAFT_API_KEY",
                                                  help="API key of the drafting server", show_default=False)] = None,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Chat examples (corrected or up-voted answers) and preference pairs from TEAM's feedback."""
    prepare()
    with reported():
        data, checked, files = workflows.feedback_training_data(
            team, output, base=base, config=config, max_tokens=max_tokens, heldout=heldout, seed=seed,
            draft_with=draft_with, draft_model=draft_model, draft_key=draft_key)
    body = {**data.as_dict(), "files": {k: str(v) for k, v in files.items()},
            "train": len(checked.split.train), "heldout": len(checked.split.heldout), "ok": checked.ok,
            "problems": [str(p) for p in checked.problems]}
    if as_json:
        print_json(body)
        return
    excluded = ", ".join(f"{n} {why}" for why, n in sorted(data.excluded.items())) or "none"
    console.print(f"team {team}: {data.rated} rated answers → {len(data.examples)} chat examples "
                  f"({body['train']} train, {body['heldout']} held out; {data.duplicates} duplicates dropped), "
                  f"{len(data.pairs_train)} + {len(data.pairs_heldout)} preference pairs; excluded: {excluded}",
                  markup=False, highlight=False)
    if data.drafts:
        console.print(f"{len(data.drafts)} drafted corrections in {files['drafts']}: review them before training",
                      markup=False, highlight=False)
    for p in checked.problems:
        console.print(f"  {p}", markup=False, highlight=False)
    console.print(f"train with: citeline adapter train --team {team} --data {files['sft']} --heldout {heldout} "
                  f"--seed {seed}", markup=False, highlight=False)
