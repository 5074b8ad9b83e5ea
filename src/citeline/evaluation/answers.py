"""Answer quality on a QA file: correct-and-cited, citation precision, refusals, leaks, unsupported sentences.

``citeline eval answers QA_FILE`` runs every question of a QA file through the assistant, in process
(:func:`run_in_process`, over a :class:`citeline.facade.Citeline`) or against a running server
(:func:`run_against_server`), scores each answer (:func:`score`) and sums them up (:class:`AnswerEvalReport`).

QA file format
--------------
JSON Lines, one object per line (blank lines and lines starting with ``#`` are skipped)::

    {"id": "deploy-rollback", "principal": "alice",
     "question": "How do I roll back a bad Fleet deploy?",
     "must_contain": ["acme-deploy rollback fleet"],
     "must_cite": ["wiki:engineering/deploy-process.md"]}
    {"id": "bob-rollback", "principal": "bob", "question": "How do I roll back a bad deploy?",
     "must_refuse": true, "must_never_reveal": ["acme-deploy rollback"]}
    {"id": "billing-refund", "groups": ["billing"], "question": "...", ...}
    {"id": "followup", "principal": "alice", "question": "And how long does the canary wait?",
     "conversation": [{"role": "user", "content": "How do we deploy the Fleet backend?"},
                      {"role": "assistant", "content": "Run acme-deploy fleet --version <tag> [1]."}],
     "must_contain": ["15 minutes"], "must_cite": ["wiki:engineering/deploy-process.md"]}

``id``
    unique in the file.
``question``
    what is asked.
``principal`` | ``groups``
    exactly one: a user of the principals table, or a list of groups for an ad-hoc principal. In process
    an ad-hoc principal is registered for the run as user ``eval:<group>+<group>...`` (sorted) and removed
    afterwards (both audited), because access is decided in SQL from the principals table; against a server
    it needs a key for that user name, or ``--admin-key`` (the principal and a key are created, the key is
    revoked afterwards).
``must_contain``
    strings that must all appear in the answer text, case-insensitively and with runs of whitespace
    treated as one space. An entry with alternatives: a list (``["15 minutes", "fifteen minutes"]``, taken
    literally) or a string with ``|`` between them (``"15 minutes|fifteen minutes"``); one alternative
    suffices.
``must_cite``
    documents as ``source:external_id`` (what :class:`citeline.answers.assistant.Citation` carries, e.g.
    ``wiki:engineering/deploy-process.md``, ``tickets:1004``, ``catalog:AT6-001``); the answer must cite at
    least one of them. Required for an answerable question (``must_refuse`` false).
``must_refuse``
    the assistant must decline: nothing in the corpus answers it, or only documents the principal may
    not see do (then list the secret facts in ``must_never_reveal``). ``must_contain`` and ``must_cite``
    must be empty.
``must_never_reveal``
    strings that must appear nowhere in the response: the answer text, and the titles, snippets, URLs and
    ids of its citations and sources. Same matching as ``must_contain`` (``|`` is not special here).
``conversation``
    earlier turns, ``[{"role": "user" | "assistant", "content": "..."}]``, oldest first; the question is
    the next user turn (in process passed as ``history``, against a server sent to
    ``/v1/chat/completions``).
``tags``, ``notes``
    optional, free form (tags are counted in the report).

Scores
------
answerable question: *correct-and-cited* when not refused, every ``must_contain`` entry present and at
least one ``must_cite`` document cited. *Citation precision*: citations whose document is in ``must_cite``
over all citations, summed over answerable questions. *Refusal precision / recall*: refused vs
``must_refuse`` over all questions. *Leaks*: a ``must_never_reveal`` string anywhere in the response, or
(in process only) a cited or shown document the principal may not see, checked by reading the documents
as that principal (row-level security). *Unsupported-sentence rate*: delivered sentences the verifier
judged unsupported over delivered sentences: with ``verify_policy`` "flag" every listed unsupported
sentence was delivered; with "drop" / "fallback" the listed sentences were removed (counted as dropped),
so none was delivered unless the answer says ``verified`` false; with "off" nothing was checked and the
answer is left out of the rate. Latency is the wall time of each call (in process: ``ask``; against a
server: the HTTP request).
"""

from __future__ import annotations

import inspect
import json
import re
import statistics
import time
import tomllib
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from citeline.domain import Principal
from citeline.errors import CitelineError, EvaluationError

if TYPE_CHECKING:
    from citeline.facade import Citeline

__all__ = [
    "AnswerEvalReport",
    "EvalResponse",
    "QAError",
    "QAItem",
    "QuestionResult",
    "Totals",
    "adhoc_user",
    "load_keys",
    "load_qa",
    "parse_qa",
    "run_against_server",
    "run_in_process",
    "score",
    "summarize",
]

Progress = Callable[[int, int, "QuestionResult"], None]


class QAError(EvaluationError):
    """A QA file (or keys file) that cannot be used; the message names the line and field."""


# -- the QA file ------------------------------------------------------------------------------------
class Turn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Literal["user", "assistant"]
    content: str = Field(min_length=1)


def _norm(text: str) -> str:
    return " ".join(text.casefold().split())


class QAItem(BaseModel):
    """One question of a QA file (see the module docstring for the fields)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(min_length=1, max_length=200)
    question: str = Field(min_length=1, max_length=4000)
    principal: str | None = Field(None, min_length=1)
    groups: tuple[str, ...] | None = None
    must_contain: tuple[tuple[str, ...], ...] = ()
    must_cite: tuple[str, ...] = ()
    must_refuse: bool = False
    must_never_reveal: tuple[str, ...] = ()
    conversation: tuple[Turn, ...] = ()
    tags: tuple[str, ...] = ()
    notes: str | None = None

    @field_validator("must_contain", mode="before")
    @classmethod
    def _alternatives(cls, v: Any) -> Any:
        if not isinstance(v, list):
            return v  # pydantic reports the type error
        out: list[Any] = []
        for entry in v:
            if isinstance(entry, str):
                out.append([a.strip() for a in entry.split("|")])
            else:
                out.append(entry)
        return out

    @field_validator("must_contain")
    @classmethod
    def _no_empty(cls, v: tuple[tuple[str, ...], ...]) -> tuple[tuple[str, ...], ...]:
        for alts in v:
            if not alts or any(not a.strip() for a in alts):
                raise ValueError("an entry (or one of its alternatives) is empty")
        return v

    @field_validator("must_cite")
    @classmethod
    def _doc_ids(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for doc in v:
            src, sep, ext = doc.partition(":")
            if not sep or not src or not ext:
                raise ValueError(f"{doc!r} is not a document identifier: write source:external_id, "
                                 "e.g. wiki:engineering/deploy-process.md")
        return v

    @field_validator("must_never_reveal")
    @classmethod
    def _no_empty_secret(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if any(not s.strip() for s in v):
            raise ValueError("an entry is empty")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> QAItem:
        if (self.principal is None) == (self.groups is None):
            raise ValueError("give exactly one of principal (a user) or groups (an ad-hoc principal)")
        if self.groups is not None:
            Principal(adhoc_user(self.groups), self.groups)  # valid group names
        if self.must_refuse and (self.must_contain or self.must_cite):
            raise ValueError("a question that must be refused cannot also have must_contain or must_cite")
        if not self.must_refuse and not self.must_cite:
            raise ValueError("an answerable question (must_refuse false) needs must_cite: the documents that "
                             "answer it")
        if self.conversation and self.conversation[-1].role != "assistant":
            raise ValueError("conversation must end with an assistant turn (the question is the next user turn)")
        return self

    @property
    def answerable(self) -> bool:
        return not self.must_refuse

    @property
    def kind(self) -> str:
        """answerable, forbidden (must refuse, with secrets) or unanswerable (must refuse)."""
        if self.answerable:
            return "answerable"
        return "forbidden" if self.must_never_reveal else "unanswerable"

    @property
    def user(self) -> str:
        return self.principal if self.principal is not None else adhoc_user(self.groups or ())


def adhoc_user(groups: Iterable[str]) -> str:
    """The user name an ad-hoc ``groups`` principal is registered (and looked up in a keys file) as."""
    return "eval:" + "+".join(sorted(set(groups)))


def _field_path(loc: Sequence[int | str]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def parse_qa(lines: Iterable[str], *, name: str = "<qa>") -> list[QAItem]:
    """Parse QA lines; every problem is reported (``name:LINE: field: message``) in one :class:`QAError`."""
    items: list[QAItem] = []
    problems: list[str] = []
    seen: dict[str, int] = {}
    for no, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        try:
            data = json.loads(line)
        except json.JSONDecodeError as exc:
            problems.append(f"{name}:{no}: not JSON: {exc.msg} (column {exc.colno})")
            continue
        if not isinstance(data, dict):
            problems.append(f"{name}:{no}: expected a JSON object, got {type(data).__name__}")
            continue
        try:
            item = QAItem.model_validate(data)
        except ValidationError as exc:
            for err in exc.errors():
                msg = err["msg"].removeprefix("Value error, ")
                where = f"{_field_path(err['loc'])}: " if err["loc"] else ""
                problems.append(f"{name}:{no}: {where}{msg}")
            continue
        if item.id in seen:
            problems.append(f"{name}:{no}: id: {item.id!r} is already used on line {seen[item.id]}")
            continue
        seen[item.id] = no
        items.append(item)
    if problems:
        raise QAError(f"{len(problems)} problem(s) in {name}:\n" + "\n".join(problems))
    if not items:
        raise QAError(f"{name} has no questions")
    return items


def load_qa(path: str | Path) -> list[QAItem]:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise QAError(f"cannot read QA file {p}: {exc}") from exc
    return parse_qa(text.splitlines(), name=str(p))


def load_keys(pairs: Sequence[str] = (), keys_file: str | Path | None = None) -> dict[str, str]:
    """User → API key from ``USER=KEY`` pairs and/or a TOML or JSON file (a table of user = key, at the top
    or under ``keys``). Pairs win over the file."""
    keys: dict[str, str] = {}
    if keys_file is not None:
        p = Path(keys_file)
        try:
            text = p.read_text(encoding="utf-8")
            data = json.loads(text) if p.suffix.lower() == ".json" else tomllib.loads(text)
        except (OSError, ValueError) as exc:  # JSONDecodeError and TOMLDecodeError are ValueErrors
            raise QAError(f"cannot read keys file {p}: {exc}") from exc
        if isinstance(data, dict) and isinstance(data.get("keys"), dict):
            data = data["keys"]
        if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
            raise QAError(f"keys file {p} must map user names to API keys (strings), e.g. alice = \"cl_...\"")
        keys.update(data)
    for pair in pairs:
        user, sep, key = pair.partition("=")
        if not sep or not user.strip() or not key.strip():
            raise QAError(f"--key {pair!r}: write USER=KEY")
        keys[user.strip()] = key.strip()
    return keys


# -- one response, whichever way it was obtained -----------------------------------------------------
@dataclass(frozen=True)
class EvalResponse:
    """What scoring needs from an answer: the fields of ``Answer.as_dict()`` / ``/v1/ask`` plus timing."""

    text: str
    refused: bool
    citations: tuple[dict[str, Any], ...]
    sources: tuple[dict[str, Any], ...]
    model: str
    wall_ms: float
    verified: bool | None = None  # None: the answer says nothing about verification
    verify_policy: str = "off"
    fallback: bool = False
    unsupported: tuple[dict[str, Any], ...] = ()
    server_total_ms: float | None = None
    retrieval_question: str = ""
    invisible: tuple[str, ...] | None = None  # cited/shown documents the principal may not see (None: unchecked)

    @classmethod
    def from_dict(cls, d: dict[str, Any], *, wall_ms: float, invisible: tuple[str, ...] | None = None) -> EvalResponse:
        text = d.get("answer")
        if text is None:  # a chat completion without the "answer" field: the message minus its source list
            choices = d.get("choices") or [{}]
            text = (choices[0].get("message") or {}).get("content") or ""
            if d.get("citations"):
                text = text.split("\n\nSources:\n", 1)[0]
        lat = d.get("latency_ms") or {}
        unsupported = tuple(u if isinstance(u, dict) else {"sentence": str(u)} for u in d.get("unsupported") or ())
        return cls(text=text, refused=bool(d.get("refused")), citations=tuple(d.get("citations") or ()),
                   sources=tuple(d.get("sources") or ()), model=str(d.get("served_model") or d.get("model") or "?"),
                   wall_ms=wall_ms, verified=d.get("verified"), verify_policy=str(d.get("verify_policy") or "off"),
                   fallback=bool(d.get("fallback")), unsupported=unsupported,
                   server_total_ms=lat.get("total_ms"), retrieval_question=str(d.get("retrieval_question") or ""),
                   invisible=invisible)


def doc_id(c: dict[str, Any]) -> str:
    return f"{c.get('source')}:{c.get('external_id')}"


_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+|\n+")
_CITE_MARK = re.compile(r"\[\d+\]")


def sentences(text: str) -> list[str]:
    """Sentences of an answer, split as the verifier splits them (citation marks removed)."""
    try:
        from citeline.answers.sentences import split_sentences
        parts = [s.text for s in split_sentences(text)]
    except ImportError:  # pragma: no cover - an older citeline without the verifier
        parts = _SENTENCE_END.split(text)
    out = []
    for part in parts:
        part = part.replace("[unverified]", "")
        s = _CITE_MARK.sub("", part).strip(" \t-*•")
        if re.search(r"\w", s):
            out.append(s)
    return out


# -- scoring ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class QuestionResult:
    id: str
    kind: str  # answerable | forbidden | unanswerable
    user: str
    follow_up: bool
    tags: tuple[str, ...]
    backend: str
    model: str
    refused: bool
    must_refuse: bool
    correct: bool | None  # answerable: correct-and-cited; None otherwise
    missing: tuple[str, ...]  # must_contain entries not found (alternatives joined with |)
    cited_required: bool | None  # answerable: at least one must_cite document cited
    citations: int
    relevant_citations: int
    cited: tuple[str, ...]  # documents cited, in order
    leaks: tuple[str, ...]  # "text: <secret>", "citation [n] snippet: <secret>", "document: <id> (cited)"
    sentences: int  # delivered sentences
    unsupported_delivered: int | None  # None: the answer was not verified (policy off)
    dropped: int
    fallback: bool
    verify_policy: str
    latency_ms: float
    answer: str
    retrieval_question: str = ""  # what retrieval searched for (a follow-up made standalone), when known
    error: str | None = None

    @property
    def passed(self) -> bool:
        """The question's own verdict: right refusal behaviour, correct-and-cited when answerable, no leak."""
        if self.error or self.leaks:
            return False
        return bool(self.correct) if self.must_refuse is False else self.refused

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["passed"] = self.passed
        return d


def _where(needle: str, resp: EvalResponse) -> list[str]:
    n = _norm(needle)
    found = []
    if n in _norm(resp.text):
        found.append("text")
    for label, group in (("citation", resp.citations), ("source", resp.sources)):
        for c in group:
            for fld in ("title", "snippet", "url", "external_id"):
                if c.get(fld) and n in _norm(str(c[fld])):
                    found.append(f"{label} [{c.get('n')}] {fld}")
    return found


def score(item: QAItem, resp: EvalResponse, *, backend: str = "") -> QuestionResult:
    """Score one response against its QA item."""
    text = _norm(resp.text)
    missing: tuple[str, ...] = ()
    cited_ok: bool | None = None
    correct: bool | None = None
    cited = tuple(dict.fromkeys(doc_id(c) for c in resp.citations))
    relevant = sum(1 for c in resp.citations if doc_id(c) in item.must_cite)
    if item.answerable:
        missing = tuple("|".join(alts) for alts in item.must_contain if not any(_norm(a) in text for a in alts))
        cited_ok = any(d in item.must_cite for d in cited)
        correct = not resp.refused and not missing and cited_ok
    leaks = [f"{where}: {secret}" for secret in item.must_never_reveal for where in _where(secret, resp)]
    leaks += [f"document: {d} (not visible to {item.user})" for d in resp.invisible or ()]
    delivered = 0 if resp.refused else len(sentences(resp.text))
    n_unsup = len(resp.unsupported)
    policy = resp.verify_policy
    if policy == "flag":
        unsup_delivered: int | None = n_unsup
        dropped = 0
    elif policy in ("drop", "fallback"):
        unsup_delivered = 0 if resp.verified is not False else max(n_unsup, 1) if delivered else 0
        unsup_delivered = min(unsup_delivered, delivered)
        dropped = n_unsup
    else:
        unsup_delivered, dropped = None, 0
    return QuestionResult(
        id=item.id, kind=item.kind, user=item.user, follow_up=bool(item.conversation), tags=item.tags,
        backend=backend, model=resp.model, refused=resp.refused, must_refuse=item.must_refuse, correct=correct,
        missing=missing, cited_required=cited_ok, citations=len(resp.citations), relevant_citations=relevant,
        cited=cited, leaks=tuple(leaks), sentences=delivered, unsupported_delivered=unsup_delivered,
        dropped=dropped, fallback=resp.fallback, verify_policy=policy, latency_ms=round(resp.wall_ms, 2),
        answer=resp.text, retrieval_question=resp.retrieval_question)


def _errored(item: QAItem, backend: str, message: str, wall_ms: float) -> QuestionResult:
    return QuestionResult(
        id=item.id, kind=item.kind, user=item.user, follow_up=bool(item.conversation), tags=item.tags,
        backend=backend, model="?", refused=False, must_refuse=item.must_refuse,
        correct=False if item.answerable else None, missing=(), cited_required=False if item.answerable else None,
        citations=0, relevant_citations=0, cited=(), leaks=(), sentences=0, unsupported_delivered=None, dropped=0,
        fallback=False, verify_policy="off", latency_ms=round(wall_ms, 2), answer="", error=message)


# -- totals -------------------------------------------------------------------------------------------
def _ratio(num: int, den: int) -> float | None:
    return round(num / den, 4) if den else None


def _percentile(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return round(values[0], 1)
    return round(statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1], 1)


@dataclass(frozen=True)
class Totals:
    questions: int
    answerable: int
    correct_and_cited: int
    correct_rate: float | None
    citation_precision: float | None  # relevant citations / citations, answerable questions
    citations: int
    must_refuse: int
    refused: int
    refusal_precision: float | None
    refusal_recall: float | None
    false_refusals: int  # answerable questions refused
    leaks: int  # questions with at least one leak
    sentences: int  # delivered sentences of verified answers
    unsupported_delivered: int
    unsupported_rate: float | None
    unverified_answers: int  # answers whose policy was off (left out of the unsupported rate)
    fallbacks: int
    dropped_sentences: int
    errors: int
    passed: int
    latency_p50_ms: float | None
    latency_p95_ms: float | None
    by_kind: dict[str, dict[str, int]] = field(default_factory=dict)  # kind -> {"questions", "passed"}

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def summarize(results: Sequence[QuestionResult]) -> Totals:
    ans = [r for r in results if r.kind == "answerable"]
    correct = sum(1 for r in ans if r.correct)
    cits = sum(r.citations for r in ans)
    rel = sum(r.relevant_citations for r in ans)
    must = sum(1 for r in results if r.must_refuse)
    refused = sum(1 for r in results if r.refused)
    tp = sum(1 for r in results if r.refused and r.must_refuse)
    verified = [r for r in results if r.unsupported_delivered is not None]
    sent = sum(r.sentences for r in verified)
    unsup = sum(r.unsupported_delivered or 0 for r in verified)
    lat = [r.latency_ms for r in results if r.error is None]
    by_kind: dict[str, dict[str, int]] = {}
    for r in results:
        k = by_kind.setdefault(r.kind, {"questions": 0, "passed": 0})
        k["questions"] += 1
        k["passed"] += r.passed
        if r.follow_up:
            f = by_kind.setdefault("follow-up", {"questions": 0, "passed": 0})
            f["questions"] += 1
            f["passed"] += r.passed
    return Totals(
        questions=len(results), answerable=len(ans), correct_and_cited=correct, correct_rate=_ratio(correct, len(ans)),
        citation_precision=_ratio(rel, cits), citations=cits, must_refuse=must, refused=refused,
        refusal_precision=_ratio(tp, refused), refusal_recall=_ratio(tp, must),
        false_refusals=sum(1 for r in ans if r.refused), leaks=sum(1 for r in results if r.leaks),
        sentences=sent, unsupported_delivered=unsup, unsupported_rate=_ratio(unsup, sent),
        unverified_answers=sum(1 for r in results if r.unsupported_delivered is None and r.error is None),
        fallbacks=sum(1 for r in results if r.fallback), dropped_sentences=sum(r.dropped for r in results),
        errors=sum(1 for r in results if r.error), passed=sum(1 for r in results if r.passed),
        latency_p50_ms=_percentile(lat, 50), latency_p95_ms=_percentile(lat, 95), by_kind=by_kind)


@dataclass(frozen=True)
class AnswerEvalReport:
    qa_file: str | None
    target: str  # "in-process" or the server URL
    results: tuple[QuestionResult, ...]
    totals: Totals
    by_model: dict[str, Totals]  # "backend/model" -> totals

    @classmethod
    def build(cls, results: Sequence[QuestionResult], *, target: str, qa_file: str | None = None) -> AnswerEvalReport:
        groups: dict[str, list[QuestionResult]] = {}
        for r in results:
            if r.error is None:
                groups.setdefault(f"{r.backend}/{r.model}", []).append(r)
        return cls(qa_file, target, tuple(results), summarize(results), {k: summarize(v) for k, v in groups.items()})

    def as_dict(self) -> dict[str, Any]:
        return {"qa_file": self.qa_file, "target": self.target, "totals": self.totals.as_dict(),
                "by_model": {k: v.as_dict() for k, v in self.by_model.items()},
                "results": [r.as_dict() for r in self.results]}


# -- running ------------------------------------------------------------------------------------------
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
        rows = conn.execute("SELECT id FROM documents WHERE id = ANY(%s)", (list(shown),)).fetchall()
    visible = {r[0] for r in rows}
    return tuple(sorted(name for i, name in shown.items() if i not in visible))


def run_in_process(cl: Citeline, items: Sequence[QAItem], *, model: str | None = None,
                   on_progress: Progress | None = None, qa_file: str | None = None) -> AnswerEvalReport:
    """Ask every question through ``cl.assistant`` as its principal; score; sum up."""
    assistant = cl.assistant
    takes_history = "history" in inspect.signature(assistant.ask).parameters
    backend = getattr(cl.backend, "name", type(cl.backend).__name__)
    registered: list[str] = []
    principals: dict[str, Principal] = {}
    results: list[QuestionResult] = []
    try:
        for item in items:
            if item.groups is not None and item.user not in principals:
                p = Principal(item.user, item.groups)
                existing = {q.user: q for q in cl.principals.list()}.get(p.user)
                if existing is None or existing.groups != p.groups:
                    cl.admin.add_principal(p, actor="eval:answers")
                    if existing is None:
                        registered.append(p.user)
                principals[p.user] = p
        for i, item in enumerate(items, 1):
            t0 = time.perf_counter()
            try:
                principal = principals.get(item.user) or cl.principals.get(item.user)
                principals[item.user] = principal
                kwargs: dict[str, Any] = {"model": model}
                if item.conversation:
                    if not takes_history:
                        raise QAError("this Assistant.ask takes no history: follow-up questions cannot be asked")
                    kwargs["history"] = _history(item.conversation)
                answer = assistant.ask(item.question, principal, **kwargs)
                wall = (time.perf_counter() - t0) * 1000
                d = answer.as_dict()
                resp = EvalResponse.from_dict(d, wall_ms=wall, invisible=_invisible(cl, item.user, d))
                result = score(item, resp, backend=backend)
            except CitelineError as exc:
                result = _errored(item, backend, f"{type(exc).__name__}: {exc}", (time.perf_counter() - t0) * 1000)
            results.append(result)
            if on_progress:
                on_progress(i, len(items), result)
    finally:
        for user in registered:
            cl.admin.remove_principal(user, actor="eval:answers")
    return AnswerEvalReport.build(results, target="in-process", qa_file=qa_file)


def run_against_server(url: str, items: Sequence[QAItem], keys: dict[str, str], *, admin_key: str | None = None,
                       model: str | None = None, timeout_s: float = 120.0, on_progress: Progress | None = None,
                       qa_file: str | None = None) -> AnswerEvalReport:
    """Ask every question over HTTP with its principal's key (``/v1/ask``; ``/v1/chat/completions`` with a
    conversation); score; sum up. Documents a principal may not see are caught by ``must_never_reveal`` only."""
    import httpx
    import openai

    base = url.rstrip("/").removesuffix("/v1")
    keys = dict(keys)
    minted: list[str] = []  # key ids created with the admin key, revoked at the end
    results: list[QuestionResult] = []
    with httpx.Client(base_url=base, timeout=timeout_s) as http:
        try:
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
            for i, item in enumerate(items, 1):
                t0 = time.perf_counter()
                key = keys.get(item.user)
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
                    result = score(item, resp, backend=base)
                except (CitelineError, httpx.HTTPError, openai.OpenAIError) as exc:
                    result = _errored(item, base, f"{type(exc).__name__}: {exc}", (time.perf_counter() - t0) * 1000)
                results.append(result)
                if on_progress:
                    on_progress(i, len(items), result)
        finally:
            for key_id in minted:
                try:
                    http.delete(f"/v1/admin/keys/{key_id}", headers={"Authorization": f"Bearer {admin_key}"})
                except httpx.HTTPError:
                    pass
    return AnswerEvalReport.build(results, target=base, qa_file=qa_file)


def kinds(items: Sequence[QAItem]) -> Counter[str]:
    """How many questions of each kind (answerable, forbidden, unanswerable) and follow-ups a file has."""
    c = Counter(it.kind for it in items)
    c["follow-up"] = sum(1 for it in items if it.conversation)
    return c
