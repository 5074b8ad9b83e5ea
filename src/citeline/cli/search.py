"""``citeline search "QUERY" --as USER``."""

from __future__ import annotations

from typing import Annotated

import typer

from citeline.cli._common import AsUserOption, ConfigOption, JsonOption, PlainTable, console, opened, print_json
from citeline.domain import SearchMode


def search(
    query: Annotated[str, typer.Argument(help="what to look for")],
    as_user: AsUserOption = None,
    public: Annotated[bool, typer.Option("--public", help="search as nobody: public documents only")] = False,
    k: Annotated[int | None, typer.Option("-k", "--top-k", min=1, max=1000, help="number of results")] = None,
    mode: Annotated[SearchMode, typer.Option(help="dense, lexical or hybrid")] = SearchMode.HYBRID,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Search the index with exactly the access of one principal."""
    if (as_user is None) == (not public):
        raise typer.BadParameter("give --as USER, or --public to search public documents only")
    with opened(config) as cl:
        if as_user is not None:
            cl.principals.get(as_user)  # unknown principal: a clear error rather than silently public-only
        result = cl.search(query, user=as_user, k=k, mode=mode)
    if as_json:
        print_json({"query": query, "user": as_user, "mode": mode.value, "embed_ms": round(result.embed_ms, 2),
                    "db_ms": round(result.db_ms, 2), "hits": [h.as_dict() for h in result.hits]})
        return
    table = PlainTable(title=f"{mode.value} results for {as_user or 'public'}: {query}", show_lines=True)
    for col in ("#", "score", "title", "source", "snippet"):
        table.add_column(col)
    for i, h in enumerate(result.hits, 1):
        snippet = " ".join(h.text.split())[:160]
        table.add_row(str(i), f"{h.score:.4f}", f"{h.title}\n{h.url or ''}", h.source, snippet)
    console.print(table)
    if not result.hits:
        console.print("no results visible to this principal")
