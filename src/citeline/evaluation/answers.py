"""Answer quality on a QA file: correct-and-cited, citation precision, refusals, leaks, unsupported sentences.

``citeline eval answers QA_FILE`` runs every question of a QA file through the assistant, in process
(:func:`run_in_process`, over a :class:`citeline.facade.Citeline`) or against a running server
(:func:`run_against_server`), scores each answer (:func:`score`) and sums them up (:class:`AnswerEvalReport`).

The parts: :mod:`citeline.evaluation.qa` (the QA file format, :func:`load_qa`, :func:`load_keys`),
:mod:`citeline.evaluation.scoring` (:func:`score`, :func:`summarize`, :class:`AnswerEvalReport`, and what
the scores mean) and this module, which runs the questions and re-exports the public names of the other two.
"""

from __future__ import annotations

import contextlib
import inspect
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from psycopg.rows import dict_row

from citeline.domain import Principal
from citeline.errors import CitelineError
from citeline.evaluation.qa import QAError, QAItem, Turn, adhoc_user, kinds, load_keys, load_qa, parse_qa
from citeline.evaluation.scoring import (
    AnswerEvalReport,
    EvalResponse,
    QuestionResult,
    Totals,
    doc_id,
    errored,
    score,
    sentences,
    summarize,
)

if TYPE_CHECKING:
    import httpx

    from citeline.facade import Citeline

__all__ = [
    "AnswerEvalReport",
    "EvalResponse",
    "QAError",
    "QAItem",
    "QuestionResult",
    "Totals",
    "adhoc_user",
    "doc_id",
    "kinds",
    "load_keys",
    "load_qa",
    "parse_qa",
    "run_against_server",
    "run_in_process",
    "score",
    "sentences",
    "summarize",
]

Progress = Callable[[int, int, "QuestionResult"], None]

# which of the given documents the reading user may see (run as that user, under row-level security)
_VISIBLE_DOCUMENTS = "SELECT id FROM documents WHERE id = ANY(%s)"


def _chat_message_type() -> Any:
    for module in ("citeline.contracts.generator", "citeline.answers.assistant", "citeline.domain"):
        mod = __import__(module, fromlist=["ChatMessage"])
        if hasattr(mod, "ChatMessage"):
            return mod.ChatMessage
    return None


def _history(turns: Sequence[Turn]) -> tuple[Any, ...]:
    msg = _chat_message_type()
    if msg is None:
        return tuple({"role": t.role, "content": t.content} for t in turns)
    return tuple(msg(role=t.role, content=t.content) for t in turns)


def _invisible(cl: Citeline, user: str, d: dict[str, Any]) -> tuple[str, ...]:
    """Cited or shown documents that ``user`` may not read (read back as that user, under row-level security)."""
    shown = {int(c["document_id"]): doc_id(c) for c in [*d.get("citations", ()), *d.get("sources", ())]}
    if not shown:
        return ()
    with cl.db.reader(user) as conn:
        rows = conn.cursor(row_factory=dict_row).execute(_VISIBLE_DOCUMENTS, (list(shown),)).fetchall()
    visible = {r["id"] for r in rows}
    return tuple(sorted(name for i, name in shown.items() if i not in visible))


def _register_adhoc(cl: Citeline, items: Sequence[QAItem]) -> tuple[dict[str, Principal], list[str]]:
    """Ad-hoc ``groups`` principals put into the principals table (audited); returns them and the users that
    were new (to remove afterwards)."""
    registered: list[str] = []
    principals: dict[str, Principal] = {}
    for item in items:
        if item.groups is not None and item.user not in principals:
            p = Principal(item.user, item.groups)
            existing = {q.user: q for q in cl.principals.list()}.get(p.user)
            if existing is None or existing.groups != p.groups:
                cl.admin.add_principal(p, actor="eval:answers")
                if existing is None:
                    registered.append(p.user)
            principals[p.user] = p
    return principals, registered


def _ask_in_process(cl: Citeline, item: QAItem, principals: dict[str, Principal], *, model: str | None,
                    backend: str) -> QuestionResult:
    t0 = time.perf_counter()
    try:
        principal = principals.get(item.user) or cl.principals.get(item.user)
        principals[item.user] = principal
        kwargs: dict[str, Any] = {"model": model}
        if item.conversation:
            if "history" not in inspect.signature(cl.assistant.ask).parameters:
                raise QAError("this Assistant.ask takes no history: follow-up questions cannot be asked")
            kwargs["history"] = _history(item.conversation)
        answer = cl.assistant.ask(item.question, principal, **kwargs)
        wall = (time.perf_counter() - t0) * 1000
        d = answer.as_dict()
        resp = EvalResponse.from_dict(d, wall_ms=wall, invisible=_invisible(cl, item.user, d))
        return score(item, resp, backend=backend)
    except CitelineError as exc:
        return errored(item, backend, f"{type(exc).__name__}: {exc}", (time.perf_counter() - t0) * 1000)


def run_in_process(cl: Citeline, items: Sequence[QAItem], *, model: str | None = None,
                   on_progress: Progress | None = None, qa_file: str | None = None) -> AnswerEvalReport:
    """Ask every question through ``cl.assistant`` as its principal; score; sum up."""
    backend = getattr(cl.backend, "name", type(cl.backend).__name__)
    results: list[QuestionResult] = []
    registered: list[str] = []
    try:
        principals, registered = _register_adhoc(cl, items)
        for i, item in enumerate(items, 1):
            result = _ask_in_process(cl, item, principals, model=model, backend=backend)
            results.append(result)
            if on_progress:
                on_progress(i, len(items), result)
    finally:
        for user in registered:
            cl.admin.remove_principal(user, actor="eval:answers")
    return AnswerEvalReport.build(results, target="in-process", qa_file=qa_file)


def _mint_keys(http: httpx.Client, items: Sequence[QAItem], keys: dict[str, str], admin_key: str | None,
               minted: list[str]) -> None:
    """With the admin key: register each ad-hoc principal that has no key and create one (its id is appended to
    ``minted``, to revoke at the end)."""
    missing_users = sorted({it.user for it in items if it.user not in keys})
    adhoc = {it.user: it.groups for it in items if it.groups is not None}
    for user in missing_users:
        if admin_key and user in adhoc:
            auth = {"Authorization": f"Bearer {admin_key}"}
            r = http.put("/v1/admin/principals", json={"user": user, "groups": list(adhoc[user] or ())},
                         headers=auth)
            r.raise_for_status()
            r = http.post("/v1/admin/keys", json={"user": user, "label": "eval answers"}, headers=auth)
            r.raise_for_status()
            keys[user] = r.json()["key"]
            minted.append(r.json()["key_id"])


def _ask_over_http(http: httpx.Client, base: str, item: QAItem, key: str | None, *, model: str | None,
                   timeout_s: float) -> QuestionResult:
    """``/v1/ask``, or ``/v1/chat/completions`` for a question with a conversation."""
    import httpx
    import openai

    t0 = time.perf_counter()
    try:
        if key is None:
            hint = " or --admin-key" if item.groups is not None else ""
            raise QAError(f"no API key for {item.user!r}: pass --key {item.user}=cl_...{hint}")
        if item.conversation:
            client = openai.OpenAI(base_url=f"{base}/v1", api_key=key, timeout=timeout_s, max_retries=0)
            messages = [{"role": t.role, "content": t.content} for t in item.conversation]
            messages.append({"role": "user", "content": item.question})
            completion = client.chat.completions.create(model=model or "citeline",
                                                        messages=messages)  # type: ignore[arg-type]
            d = completion.model_dump()
        else:
            r = http.post("/v1/ask", json={"question": item.question, "model": model},
                          headers={"Authorization": f"Bearer {key}"})
            if r.status_code != 200:
                raise QAError(f"HTTP {r.status_code}: {r.text[:300]}")
            d = r.json()
        resp = EvalResponse.from_dict(d, wall_ms=(time.perf_counter() - t0) * 1000)
        return score(item, resp, backend=base)
    except (CitelineError, httpx.HTTPError, openai.OpenAIError) as exc:
        return errored(item, base, f"{type(exc).__name__}: {exc}", (time.perf_counter() - t0) * 1000)


def run_against_server(url: str, items: Sequence[QAItem], keys: dict[str, str], *, admin_key: str | None = None,
                       model: str | None = None, timeout_s: float = 120.0, on_progress: Progress | None = None,
                       qa_file: str | None = None) -> AnswerEvalReport:
    """Ask every question over HTTP with its principal's key (``/v1/ask``; ``/v1/chat/completions`` with a
    conversation); score; sum up. Documents a principal may not see are caught by ``must_never_reveal`` only."""
    import httpx

    base = url.rstrip("/").removesuffix("/v1")
    keys = dict(keys)
    minted: list[str] = []  # key ids created with the admin key, revoked at the end
    results: list[QuestionResult] = []
    with httpx.Client(base_url=base, timeout=timeout_s) as http:
        try:
            _mint_keys(http, items, keys, admin_key, minted)
            for i, item in enumerate(items, 1):
                result = _ask_over_http(http, base, item, keys.get(item.user), model=model, timeout_s=timeout_s)
                results.append(result)
                if on_progress:
                    on_progress(i, len(items), result)
        finally:
            for key_id in minted:
                with contextlib.suppress(httpx.HTTPError):
                    http.delete(f"/v1/admin/keys/{key_id}", headers={"Authorization": f"Bearer {admin_key}"})
    return AnswerEvalReport.build(results, target=base, qa_file=qa_file)
