"""``citeline ask "QUESTION" --as USER [--json]``: a grounded, cited answer (or a refusal)."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from citeline.cli._common import AS_USER_HELP, ConfigOption, JsonOption, console, opened, print_json


def ask(
    question: Annotated[str, typer.Argument(help="the question")],
    as_user: Annotated[str, typer.Option("--as", metavar="USER", help=AS_USER_HELP)],
    model: Annotated[str | None, typer.Option(help="a served model or adapter name of the user's team (default: "
                                              "the team's active adapter, else the base model)")] = None,
    stream: Annotated[bool, typer.Option("--stream/--no-stream", help="print the answer as it is generated")] = False,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Answer from the documents USER may see, with citations; refuse when the evidence is too weak."""
    with opened(config) as cl:
        if stream and not as_json:
            s = cl.ask_stream(question, user=as_user, model=model)
            for delta in s:
                sys.stdout.write(delta)
                sys.stdout.flush()
            sys.stdout.write("\n")
            answer = s.answer
        else:
            answer = cl.ask(question, user=as_user, model=model)
    assert answer is not None
    if as_json:
        print_json(answer.as_dict())
        return
    if not stream:
        console.print(answer.text, highlight=False, markup=False)
    shown = answer.sources if answer.refused else answer.citations
    if shown:
        console.print("\nclosest sources:" if answer.refused else "\nsources:", style="bold")
        for c in shown:
            console.print(f"  [{c.n}] {c.title}" + (f"  {c.url}" if c.url else ""), highlight=False, markup=False)
    lat = answer.latency_ms
    if answer.unsupported or answer.fallback:
        what = ("the model's answer could not be verified against the evidence; this is the extractive answer "
                "from the same evidence" if answer.fallback else
                f"{len(answer.unsupported)} unsupported sentence(s) "
                + ("marked [unverified]" if answer.verify_policy == "flag" else "removed"))
        console.print(f"\nverification ({answer.verify_policy}): {what}", style="dim", highlight=False, markup=False)
    if answer.model_note:
        console.print(f"\nnote: {answer.model_note}", style="dim", highlight=False, markup=False)
    console.print(f"\n{answer.model} · {lat.get('total_ms', 0):.0f} ms (retrieval {lat.get('retrieve_ms', 0):.0f}, "
                  f"generation {lat.get('generate_ms', 0):.0f}, verification {lat.get('verify_ms', 0):.0f}) · "
                  f"audit #{answer.audit_id}", style="dim", markup=False)
