"""``citeline eval retrieval --corpus --queries --qrels``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.progress import Progress
from rich.table import Table

from citeline.app import Citeline
from citeline.cli._common import ConfigOption, JsonOption, console, err_console, print_json
from citeline.evaluation import evaluate_retrieval
from citeline.settings import Settings

app = typer.Typer(no_args_is_help=True)

Existing = Annotated[Path, typer.Option(exists=True, dir_okay=False, readable=True)]


@app.command("retrieval")
def retrieval(
    corpus: Existing,
    queries: Existing,
    qrels: Existing,
    keep: Annotated[bool, typer.Option(help="keep the evaluation namespace for the next run")] = True,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Ingest a BEIR corpus into an isolated namespace; print nDCG@10, Recall@100, MRR@10 per mode."""
    settings = Settings.load(config)
    shared: dict[str, object] = {}

    def factory(namespace: str) -> Citeline:
        cl = Citeline(settings, namespace=namespace, embedder=shared.get("embedder"))  # type: ignore[arg-type]
        shared["embedder"] = cl.embedder
        return cl

    with Progress(console=err_console, disable=as_json or not err_console.is_terminal, transient=True) as progress:
        tasks: dict[str, int] = {}

        def on_progress(mode: str, done: int, total: int) -> None:
            if mode not in tasks:
                tasks[mode] = progress.add_task(f"{mode} queries", total=total)
            progress.update(tasks[mode], completed=done)

        report = evaluate_retrieval(factory, corpus, queries, qrels, keep=keep, on_progress=on_progress)
    if as_json:
        print_json(report.as_dict())
        return
    table = Table(title=f"{report.documents} documents, {report.queries} queries")
    for col in ("mode", "nDCG@10", "Recall@100", "MRR@10", "p50 ms"):
        table.add_column(col, justify="right")
    for mode, m in report.metrics.items():
        table.add_row(mode, f"{m['ndcg@10']:.4f}", f"{m['recall@100']:.4f}", f"{m['mrr@10']:.4f}",
                      f"{report.query_ms_p50[mode]:.1f}")
    console.print(table)
