"""``citeline adapter ...``: a team's LoRA adapter from data to evaluation (check-data, train, eval).

The work is done by :mod:`citeline.workflows` (over :mod:`citeline.lora`); this module parses options and
prints. ``app`` is the command group the registry commands (register, promote, sync, list) join as well.
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.text import Text

from citeline import workflows
from citeline.cli._common import (
    AS_USER_HELP,
    ConfigOption,
    JsonOption,
    PlainTable,
    cli_actor,
    console,
    err_console,
    escape,
    fail,
    prepare,
    print_json,
    reported,
)

if TYPE_CHECKING:
    from citeline.workflows import AdapterEvalReport, DataReport, PromotionDecision, TrainingProgress

app = typer.Typer(no_args_is_help=True)

BaseOption = Annotated[Path | None, typer.Option("--base", help="local base model folder (default: the built-in "
                                                 "SmolLM2-135M-Instruct, converted once into <home>/models)",
                                                 show_default=False)]
HeldoutOption = Annotated[float, typer.Option("--heldout", min=0.0, max=0.9, help="share of examples held out")]
SeedOption = Annotated[int, typer.Option("--seed", help="seed of the train / held-out split and of training")]
MaxTokensOption = Annotated[int, typer.Option("--max-tokens", min=16, help="longest example, in the base "
                                              "model's tokens (chat template included)")]


def _print_report(report: DataReport) -> None:
    console.print(f"{report.path}: {report.lines} lines, {len(report.examples)} usable examples → "
                  f"{len(report.split.train)} train, {len(report.split.heldout)} held out", highlight=False,
                  markup=False)
    tokens = list(report.token_counts.values())
    if tokens:
        console.print(f"tokens per example ({report.counter}): min {min(tokens)}, mean "
                      f"{sum(tokens) / len(tokens):.0f}, max {max(tokens)}, limit {report.max_tokens}", highlight=False,
                      markup=False)
        widest = max(n for _, _, n in report.histogram) or 1
        for lo, hi, n in report.histogram:
            console.print(f"  {lo:>5}–{hi - 1:<5} {'█' * round(30 * n / widest):<30} {n}", highlight=False)
    if report.ok:
        console.print("[green]no problems[/]")
        return
    table = PlainTable("line", "problem", "detail", title=f"{len(report.problems)} problem(s)", title_justify="left")
    for p in report.problems:
        table.add_row("-" if p.line is None else str(p.line), p.kind.value, p.message)
    console.print(table)


@app.command("check-data")
def check_data(
    file: Annotated[Path, typer.Argument(help="training data: chat JSONL or prompt/completion JSONL")],
    base: BaseOption = None,
    max_tokens: MaxTokensOption = 1024,
    heldout: HeldoutOption = 0.1,
    seed: SeedOption = 0,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Check training data: schema, role order, empty, overlong, duplicates, lengths, split. Exit 1 on problems."""
    prepare()
    with reported():
        report = workflows.check_training_data(file, base=base, config=config, max_tokens=max_tokens,
                                               heldout=heldout, seed=seed)
    if as_json:
        print_json(report.as_dict())
    else:
        _print_report(report)
    if not report.ok:
        raise typer.Exit(1)


@app.command("train")
def train(
    team: Annotated[str, typer.Option("--team", help="the team the adapter is for")],
    data: Annotated[Path, typer.Option("--data", help="training data (checked first; bad data trains nothing)")],
    base: BaseOption = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="adapter folder to write (default: "
                                                "<home>/adapters/<team>)", show_default=False)] = None,
    rank: Annotated[int, typer.Option("--rank", min=1, max=256, help="LoRA rank")] = 8,
    alpha: Annotated[int | None, typer.Option("--alpha", min=1, help="LoRA alpha (default: 2 × rank)",
                                              show_default=False)] = None,
    epochs: Annotated[int, typer.Option("--epochs", min=1)] = 2,
    learning_rate: Annotated[float | None, typer.Option("--lr", help="peak learning rate (default: 1e-3; 3e-2 with "
                                                       "--method prompt)", show_default=False)] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1)] = 4,
    save_every: Annotated[int, typer.Option("--save-every", min=1, help="checkpoint every N steps")] = 10,
    qlora: Annotated[bool, typer.Option("--qlora", help="4-bit base (QLoRA): needs a CUDA GPU and bitsandbytes")]
    = False,
    fresh: Annotated[bool, typer.Option("--fresh", help="discard checkpoints instead of resuming from them")] = False,
    method: Annotated[str, typer.Option("--method", help="sft: chat examples; dpo: preference pairs (`adapter data "
                                        "from-feedback` writes both); prompt: a soft prompt on chat examples (the "
                                        "cheap rung; served by the embedded backend only, not vLLM)")] = "sft",
    virtual_tokens: Annotated[int, typer.Option("--virtual-tokens", min=1, max=512, help="with --method prompt: "
                                                "the soft prompt's length")] = 20,
    init_text: Annotated[str | None, typer.Option("--init-text", help="with --method prompt: the text its "
                                                  "embeddings start from (default: a short format instruction)",
                                                  show_default=False)] = None,
    beta: Annotated[float, typer.Option("--beta", min=0.001, help="with --method dpo: how far from the starting "
                                        "model the preferences may pull")] = 0.1,
    start_from: Annotated[str | None, typer.Option("--start-from", help="base (default: a fresh adapter), active "
                                                   "(continue the team's active adapter) or an adapter folder",
                                                   show_default=False)] = None,
    threads: Annotated[int | None, typer.Option("--threads", min=1, help="torch CPU threads (default: all cores)",
                                                show_default=False)] = None,
    max_tokens: MaxTokensOption = 1024,
    heldout: HeldoutOption = 0.1,
    seed: SeedOption = 0,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Train TEAM's LoRA adapter; Ctrl-C saves a checkpoint and the same command continues from it."""
    prepare()
    options: dict[str, object] = {"rank": rank, "alpha": alpha or 2 * rank, "epochs": epochs, "batch_size": batch_size,
               "save_every": save_every, "qlora": qlora, "threads": threads, "max_tokens": max_tokens,
               "heldout": heldout, "seed": seed}
    if learning_rate is not None:
        options["learning_rate"] = learning_rate
    if method == "prompt":
        options.update(virtual_tokens=virtual_tokens, **({"init_text": init_text} if init_text else {}))
    stop = threading.Event()
    previous = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGINT, signal.SIGTERM)}
    columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total} steps"),
               TextColumn("loss {task.fields[loss]}"), TimeElapsedColumn(), TimeRemainingColumn())
    try:
        with reported(), Progress(*columns, console=err_console, disable=as_json) as bar:
            task = bar.add_task(f"training {escape(team)}", total=None, loss="-")

            def on_step(p: TrainingProgress) -> None:
                bar.update(task, completed=p.step, total=p.total_steps, loss=f"{p.loss:.3f}")

            result = workflows.train_adapter(team, data, base=base, output=output, config=config, progress=on_step,
                                             stop=stop, resume=not fresh, method=method, beta=beta,
                                             start_from=start_from, **options)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    body = {"output": str(result.output), "completed": result.completed, "step": result.step,
            "total_steps": result.total_steps, "resumed_from": result.resumed_from,
            "seconds": round(result.seconds, 1),
            "metrics": dict(result.manifest.metrics) if result.manifest else {}}
    if as_json:
        print_json(body)
    elif not result.completed:
        kept = ("nothing was saved (--method dpo keeps no checkpoints): run it again" if method == "dpo" else
                "a checkpoint is saved: run the same command again to continue")
        console.print(f"stopped at step {result.step}/{result.total_steps}; {kept}", highlight=False)
    else:
        m = result.manifest.metrics if result.manifest else {}
        resumed = f" (resumed from step {result.resumed_from})" if result.resumed_from else ""
        if method == "dpo":
            console.print(f"adapter written to {result.output} in {result.seconds:.0f} s: held-out DPO loss "
                          f"{m.get('dpo_base_heldout_loss', 0):.3f} (start) → {m.get('dpo_heldout_loss', 0):.3f}, "
                          f"chosen preferred on {m.get('dpo_heldout_preferred', 0):.0%} of held-out pairs",
                          highlight=False, markup=False)
            return
        start = f", {m['start_heldout_loss']:.3f} (start)" if "start_heldout_loss" in m else ""
        console.print(f"adapter written to {result.output}{resumed} in {result.seconds:.0f} s: held-out loss "
                      f"{m.get('base_heldout_loss', 0):.3f} (base){start} → {m.get('heldout_loss', 0):.3f}",
                      highlight=False, markup=False)
    if not result.completed:
        raise typer.Exit(130 if stop.is_set() else 1)


@app.command("eval")
def evaluate(
    adapter: Annotated[str, typer.Argument(help="the adapter folder `citeline adapter train` wrote, or a registered "
                                           "adapter's served name (its stored copy is evaluated)")],
    rules: Annotated[Path, typer.Option("--rules", help="the team's rules file (format rules, system prompt)")],
    heldout_file: Annotated[Path | None, typer.Option("--heldout-file", help="evaluation examples (default: the "
                                                      "training data's held-out split)", show_default=False)] = None,
    base: BaseOption = None,
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="evaluate the first N examples only",
                                              show_default=False)] = None,
    max_tokens: Annotated[int, typer.Option("--max-tokens", min=8, help="answer length limit")] = 256,
    grounding: Annotated[bool, typer.Option("--grounding/--no-grounding", help="also ask the held-out questions "
                                            "through the assistant (needs the index: citeline sync)")] = False,
    as_user: Annotated[str | None, typer.Option("--as", metavar="USER", help="with --grounding: " + AS_USER_HELP,
                                                show_default=False)] = None,
    against: Annotated[str, typer.Option("--against", help="the adapter to beat: active (the team's active adapter, "
                                         "if any), none, or a registered served name")] = "active",
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Adapter vs base model vs prompting baseline vs the team's active adapter on held-out prompts; writes
    citeline_eval.json."""
    if grounding and not as_user:
        fail("--grounding needs --as USER: the principal whose documents the questions are answered from")
    prepare()
    with reported(), Progress(TextColumn("evaluating"), BarColumn(), TextColumn("{task.completed}/{task.total} "
                                                                                "prompts"),
                              TimeElapsedColumn(), console=err_console, disable=as_json) as bar:
        task = bar.add_task("eval", total=None)
        report, decision = workflows.evaluate_adapter(
            adapter, rules, base=base, config=config, heldout_file=heldout_file, limit=limit, max_tokens=max_tokens,
            grounding_user=as_user if grounding else None, against=against, actor=cli_actor(),
            progress=lambda i, n: bar.update(task, completed=i, total=n))
    if as_json:
        print_json({**report.as_dict(), "decision": {"promote": decision.promote, "reasons": list(decision.reasons)}})
        return
    _print_evaluation(report, decision)


def _print_evaluation(report: AdapterEvalReport, decision: PromotionDecision) -> None:
    table = PlainTable("model", "compliant", *report.rules, "ROUGE-L", title=f"{report.examples} held-out prompts",
                       title_justify="left")
    labels = {"base": "base model", "baseline": "prompting baseline", "current": f"current ({report.current})",
              "adapter": "adapter"}
    for key in (k for k in labels if k in report.scores):
        s = report.scores[key]
        table.add_row(labels[key], f"{s.compliance:.0%}", *(f"{s.per_rule[r]:.0%}" for r in report.rules),
                      f"{s.similarity:.3f}")
    console.print(table)
    if report.grounding is not None:
        g = report.grounding
        current = "" if g.current_share is None else f", {g.current_share:.0%} with the current adapter"
        console.print(f"grounded answers: {g.base_share:.0%} without the adapter, {g.adapter_share:.0%} with it"
                      f"{current}", highlight=False, markup=False)
    verdict = Text("fit to promote", style="green") if decision.promote else Text("not fit to promote", style="red")
    console.print(verdict.append(": " + "; ".join(decision.reasons), style=None), highlight=False)
