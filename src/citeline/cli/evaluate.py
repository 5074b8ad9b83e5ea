"""``citeline eval retrieval --corpus --queries --qrels`` and ``citeline eval answers QA_FILE``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.progress import Progress, TaskID
from rich.text import Text

from citeline import workflows
from citeline.cli._common import (
    ConfigOption,
    JsonOption,
    PlainTable,
    console,
    err_console,
    escape,
    fail,
    prepare,
    print_json,
    reported,
)
from citeline.workflows import AnswerEvalReport, QuestionResult

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
    prepare()
    with reported(), Progress(console=err_console, disable=as_json or not err_console.is_terminal,
                              transient=True) as progress:
        tasks: dict[str, TaskID] = {}

        def on_progress(mode: str, done: int, total: int) -> None:
            if mode not in tasks:
                tasks[mode] = progress.add_task(f"{mode} queries", total=total)
            progress.update(tasks[mode], completed=done)

        report = workflows.evaluate_retrieval(corpus, queries, qrels, config=config, keep=keep,
                                              on_progress=on_progress)
    if as_json:
        print_json(report.as_dict())
        return
    table = PlainTable(title=f"{report.documents} documents, {report.queries} queries")
    for col in ("mode", "nDCG@10", "Recall@100", "MRR@10", "p50 ms"):
        table.add_column(col, justify="right")
    for mode, m in report.metrics.items():
        table.add_row(mode, f"{m['ndcg@10']:.4f}", f"{m['recall@100']:.4f}", f"{m['mrr@10']:.4f}",
                      f"{report.query_ms_p50[mode]:.1f}")
    console.print(table)


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v:.1%}"


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.0f}"


def _verdict(r: QuestionResult) -> Text:
    if r.error:
        return Text("error", style="red")
    return Text("pass", style="green") if r.passed else Text("FAIL", style="red")


def _problems(r: QuestionResult) -> str:
    out = []
    if r.error:
        out.append(r.error)
    if r.must_refuse and not r.refused:
        out.append("answered (must refuse)")
    if not r.must_refuse and r.refused:
        out.append("refused")
    if r.missing:
        out.append("missing " + ", ".join(repr(m) for m in r.missing))
    if r.cited_required is False and not r.refused and not r.error:
        out.append("cites none of must_cite" + (f" (cited {', '.join(r.cited)})" if r.cited else ""))
    out += [f"LEAK {leak}" for leak in r.leaks]
    if r.unsupported_delivered:
        out.append(f"{r.unsupported_delivered} unsupported delivered")
    if out and r.follow_up and r.retrieval_question:
        out.append(f"searched {r.retrieval_question!r}")
    return "; ".join(out)


def _print_report(report: AnswerEvalReport) -> None:
    table = PlainTable(title=f"{len(report.results)} questions ({report.target})")
    for col, just in (("id", "left"), ("kind", "left"), ("user", "left"), ("verdict", "left"),
                      ("cit", "right"), ("ms", "right"), ("problems", "left")):
        table.add_column(col, justify=just, overflow="fold")
    for r in report.results:
        kind = r.kind + (" +conv" if r.follow_up else "")
        table.add_row(r.id, kind, r.user, _verdict(r), f"{r.relevant_citations}/{r.citations}", _ms(r.latency_ms),
                      _problems(r))
    console.print(table)
    summary = PlainTable(title="totals")
    summary.add_column("metric")
    groups = {"all": report.totals, **report.by_model}
    for name in groups:
        summary.add_column(name, justify="right")
    rows: list[tuple[str, object]] = [
        ("correct-and-cited", lambda t: f"{t.correct_and_cited}/{t.answerable} ({_pct(t.correct_rate)})"),
        ("citation precision", lambda t: f"{_pct(t.citation_precision)} of {t.citations}"),
        ("refusal precision", lambda t: _pct(t.refusal_precision)),
        ("refusal recall", lambda t: f"{_pct(t.refusal_recall)} of {t.must_refuse}"),
        ("answerable refused", lambda t: str(t.false_refusals)),
        ("leaks (questions)", lambda t: str(t.leaks)),
        ("unsupported delivered", lambda t: f"{t.unsupported_delivered}/{t.sentences} ({_pct(t.unsupported_rate)})"
         + (f", {t.unverified_answers} unverified" if t.unverified_answers else "")),
        ("fell back / dropped", lambda t: f"{t.fallbacks} / {t.dropped_sentences}"),
        ("latency p50 / p95 ms", lambda t: f"{_ms(t.latency_p50_ms)} / {_ms(t.latency_p95_ms)}"),
        ("passed", lambda t: f"{t.passed}/{t.questions}" + (f" ({t.errors} errors)" if t.errors else "")),
    ]
    for label, fmt in rows:
        summary.add_row(label, *(fmt(t) for t in groups.values()))  # type: ignore[operator]
    for kind, c in report.totals.by_kind.items():
        summary.add_row(f"  {kind}", f"{c['passed']}/{c['questions']} passed", *("" for _ in report.by_model))
    console.print(summary)


@app.command("answers")
def answers(
    qa_file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True,
                                            help="JSONL, one question per line (see citeline.evaluation.answers)")],
    url: Annotated[str | None, typer.Option(help="ask a running server (e.g. http://127.0.0.1:8080) instead "
                                            "of answering in process")] = None,
    key: Annotated[list[str] | None, typer.Option("--key", help="USER=KEY: the API key to ask as USER "
                                                  "(with --url; repeat it)")] = None,
    keys_file: Annotated[Path | None, typer.Option(exists=True, dir_okay=False, readable=True,
                                                   help="TOML or JSON table user = key (with --url)")] = None,
    admin_key: Annotated[str | None, typer.Option(help="with --url: an admin key to create the principals "
                                                  "and temporary keys of `groups` questions")] = None,
    backend: Annotated[str | None, typer.Option(help="in process: generation backend to use instead of "
                                                "generation.backend (embedded, openai, extractive)")] = None,
    verify: Annotated[str | None, typer.Option(help="in process: answer.verify policy instead of the "
                                               "configured one (fallback, drop, flag, off)")] = None,
    model: Annotated[str | None, typer.Option(help="a served model or adapter name (default: each "
                                              "principal's team adapter, else the base model)")] = None,
    limit: Annotated[int | None, typer.Option(min=1, help="only the first N questions")] = None,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Ask every question of QA_FILE as its principal; report correct-and-cited, citation precision,
    refusals, leaks, unsupported sentences and latency."""
    with reported():
        items = workflows.load_qa(qa_file)
        keys = workflows.load_keys(key or (), keys_file) if url else {}
    if url is None and (key or keys_file or admin_key):
        fail("--key, --keys-file and --admin-key go with --url (a server); in process no keys are needed")
    if url is not None and (backend or verify):
        fail("--backend and --verify apply in process only; a server uses its own settings")
    if limit:
        items = items[:limit]
    prepare()
    with reported(), Progress(console=err_console, disable=not err_console.is_terminal, transient=True) as progress:
        task = progress.add_task("questions", total=len(items))

        def on_progress(done: int, total: int, r: QuestionResult) -> None:
            progress.update(task, completed=done, description=escape(r.id))

        report = workflows.evaluate_answers(items, qa_file=qa_file, url=url, keys=keys, admin_key=admin_key,
                                            model=model, backend=backend, verify=verify, config=config,
                                            on_progress=on_progress)
    if as_json:
        print_json(report.as_dict())
        return
    _print_report(report)
