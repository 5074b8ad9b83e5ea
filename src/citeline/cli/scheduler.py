"""``citeline scheduler [--once] [--tick SECONDS] [--http-port PORT]``: run each source on its cron schedule
(with ``--http-port``, or ``scheduler.http_port``, serving ``/metrics`` and ``/healthz`` while it runs)."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from collections.abc import Iterator
from types import FrameType
from typing import Annotated

import typer

from citeline import workflows
from citeline.cli._common import ConfigOption, JsonOption, PlainTable, console, opened, print_json
from citeline.workflows import Outcome, RunResult, Scheduler


def scheduler(
    once: Annotated[bool, typer.Option("--once", help="sync the sources that are due now, then exit")] = False,
    tick: Annotated[float | None, typer.Option("--tick", min=0.05, help="seconds between looks for due sources "
                                               "(default scheduler.tick_s)")] = None,
    retries: Annotated[int | None, typer.Option("--retries", min=0, help="retries of a failed run per cron slot "
                                                "(default scheduler.retries)")] = None,
    backoff: Annotated[float | None, typer.Option("--backoff", min=0.01, help="seconds before the first retry; "
                                                  "doubles per failure (default scheduler.backoff_s)")] = None,
    max_backoff: Annotated[float | None, typer.Option("--max-backoff", min=0.01, help="longest wait between "
                                                      "retries (default scheduler.max_backoff_s)")] = None,
    http_port: Annotated[int | None, typer.Option("--http-port", min=0, max=65535, help="serve /metrics and "
                                                  "/healthz on this port while running, 0 = any free port "
                                                  "(default scheduler.http_port: off)")] = None,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Sync each source when its cron `schedule` (UTC) is due; SIGTERM/SIGINT stop after the current batch."""
    if "CITELINE_LOG_LEVEL" not in os.environ:
        logging.getLogger("citeline.ingest").setLevel(logging.INFO)  # one line per run on stderr
    with opened(config) as cl:
        policy = workflows.retry_policy(cl.settings, retries=retries, backoff_s=backoff, max_backoff_s=max_backoff)
        sched = cl.sources.scheduler(retry=policy, tick_s=tick)
        with _stop_on_signals(sched):
            if once:
                results = sched.run_pending()
            else:
                port = cl.settings.scheduler.http_port if http_port is None else http_port
                if port is None:
                    sched.serve()
                    return
                with workflows.SchedulerMonitor(sched, host=cl.settings.scheduler.http_host, port=port) as monitor:
                    sched.serve(on_result=monitor.observe)
                return
    if as_json:
        print_json([_as_dict(r) for r in results])
    else:
        _print(results)
    if any(r.outcome is Outcome.FAILED for r in results):
        raise typer.Exit(code=1)


@contextlib.contextmanager
def _stop_on_signals(sched: Scheduler) -> Iterator[None]:
    """First SIGTERM/SIGINT: stop after the current batch. A second one: stop now (KeyboardInterrupt)."""

    def handler(signum: int, frame: FrameType | None) -> None:
        if sched.stopping:
            raise KeyboardInterrupt
        os.write(2, f"{signal.Signals(signum).name}: stopping after the current batch "
                    "(send it again to stop at once)\n".encode())
        sched.stop()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _as_dict(r: RunResult) -> dict[str, object]:
    report = vars(r.report) if r.report else None
    return {"source": r.source, "outcome": r.outcome.value, "started": r.started, "error": r.error,
            "next_run": r.next_run, "report": report}


def _print(results: list[RunResult]) -> None:
    if not results:
        console.print("nothing is due")
        return
    table = PlainTable("source", "outcome", "added", "updated", "unchanged", "deleted", "failed", "next run", "error")
    for r in results:
        rep = r.report
        counts = [str(getattr(rep, k)) if rep else "" for k in ("added", "updated", "unchanged", "deleted", "failed")]
        table.add_row(r.source, r.outcome.value, *counts, f"{r.next_run:%Y-%m-%d %H:%M UTC}" if r.next_run else "",
                      r.error or "")
    console.print(table)
