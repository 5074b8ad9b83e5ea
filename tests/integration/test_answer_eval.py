"""``citeline eval answers``: the QA file parser, scoring on constructed answers, and real runs on Acme.

The in-process runs use the extractive backend (no model) against the real embedded PostgreSQL and the
real embedder, over a copy of examples/acme indexed once for this module.
"""

from __future__ import annotations

import json
import shutil
import uuid

import psycopg
import pytest
from psycopg import sql
from typer.testing import CliRunner

from citeline.answers.assistant import Answer, Citation
from citeline.evaluation.answers import (
    AnswerEvalReport,
    EvalResponse,
    QAError,
    QAItem,
    adhoc_user,
    load_keys,
    load_qa,
    parse_qa,
    run_in_process,
    score,
    sentences,
    summarize,
)
from tests.conftest import REPO

pytestmark = pytest.mark.integration

QA = REPO / "examples" / "acme" / "qa.jsonl"
DEPLOY = "wiki:engineering/deploy-process.md"


def line(**fields: object) -> str:
    return json.dumps(fields)


# -- the QA file ------------------------------------------------------------------------------------
def test_parse_reads_alternatives_and_kinds():
    items = parse_qa([
        "# a comment",
        line(id="a", principal="alice", question="q?", must_contain=["15 minutes|fifteen minutes", ["a|b", "c"]],
             must_cite=[DEPLOY]),
        "",
        line(id="f", groups=["sales", "staff"], question="q?", must_refuse=True, must_never_reveal=["x"]),
        line(id="u", principal="bob", question="q?", must_refuse=True,
             conversation=[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]),
    ])
    a, f, u = items
    assert a.must_contain == (("15 minutes", "fifteen minutes"), ("a|b", "c"))  # a list is taken literally
    assert (a.kind, f.kind, u.kind) == ("answerable", "forbidden", "unanswerable")
    assert f.user == adhoc_user(["staff", "sales"]) == "eval:sales+staff"
    assert u.conversation[1].role == "assistant"


def test_parse_names_every_bad_line_and_field():
    lines = [
        line(id="ok", principal="alice", question="q?", must_cite=[DEPLOY]),
        "{not json",
        line(id="two", principal="alice", groups=["x"], question="q?", must_refuse=True),
        line(id="three", principal="alice", question="q?", must_cite=["deploy-process.md"]),
        line(id="four", principal="alice", question="q?"),
        line(id="five", principal="alice", question="q?", must_refuse=True, must_contain=["x"]),
        line(id="six", principal="alice", question="q?", must_cite=[DEPLOY], must_contian=["typo"]),
        line(id="seven", principal="alice", question="q?", must_refuse=True,
             conversation=[{"role": "robot", "content": "x"}]),
        line(id="ok", principal="bob", question="again?", must_refuse=True),
        "[1, 2]",
    ]
    with pytest.raises(QAError) as exc:
        parse_qa(lines, name="qa.jsonl")
    msg = str(exc.value)
    assert "qa.jsonl:2: not JSON" in msg
    assert "qa.jsonl:3: give exactly one of principal" in msg
    assert "qa.jsonl:4: must_cite: 'deploy-process.md' is not a document identifier" in msg
    assert "qa.jsonl:5: an answerable question (must_refuse false) needs must_cite" in msg
    assert "qa.jsonl:6: a question that must be refused cannot also have must_contain" in msg
    assert "qa.jsonl:7: must_contian: Extra inputs are not permitted" in msg
    assert "qa.jsonl:8: conversation[0].role:" in msg
    assert "qa.jsonl:9: id: 'ok' is already used on line 1" in msg
    assert "qa.jsonl:10: expected a JSON object" in msg
    assert msg.startswith("9 problem(s)")


def test_keys_from_pairs_and_files(tmp_path):
    toml = tmp_path / "keys.toml"
    toml.write_text('alice = "cl_a"\nbob = "cl_b"\n')
    js = tmp_path / "keys.json"
    js.write_text(json.dumps({"keys": {"carol": "cl_c"}}))
    assert load_keys(["bob=cl_B2", "eval:billing=cl_x=y"], toml) == {"alice": "cl_a", "bob": "cl_B2",
                                                                     "eval:billing": "cl_x=y"}
    assert load_keys((), js) == {"carol": "cl_c"}
    with pytest.raises(QAError, match="write USER=KEY"):
        load_keys(["alice"])
    bad = tmp_path / "bad.json"
    bad.write_text('{"alice": 3}')
    with pytest.raises(QAError, match="must map user names"):
        load_keys((), bad)


def test_the_acme_qa_set_parses_and_covers_every_kind():
    items = load_qa(QA)
    kinds = {k: sum(1 for i in items if i.kind == k) for k in ("answerable", "forbidden", "unanswerable")}
    assert kinds["answerable"] >= 24 and kinds["forbidden"] >= 8 and kinds["unanswerable"] >= 6
    assert sum(1 for i in items if i.conversation) >= 4
    assert {i.principal for i in items} >= {"alice", "bob", "carol"}
    assert any(i.groups for i in items)
    docs = {d.split(":")[0] for i in items for d in i.must_cite}
    assert docs == {"wiki", "tickets", "catalog"}


# -- scoring on constructed answers ---------------------------------------------------------------------
def cite(n: int, ext: str, source: str = "wiki", snippet: str = "", doc: int | None = None) -> Citation:
    return Citation(n, 100 + n, doc or n, source, ext, f"title {ext}", None, snippet, 0.5)


def answer(text: str, citations=(), sources=None, *, refused=False, policy="fallback", unsupported=(),
           verified=True, fallback=False) -> Answer:
    from citeline.answers.verification import Unsupported

    return Answer("q", text, refused, tuple(citations), tuple(sources if sources is not None else citations), 0,
                  "extractive", 0.6, {"total_ms": 12.0}, 1, verified=verified,
                  unsupported=tuple(Unsupported(s, "no support", (1,)) for s in unsupported),
                  verify_policy=policy, fallback=fallback)


def resp(a: Answer, ms: float = 10.0, invisible=None) -> EvalResponse:
    return EvalResponse.from_dict(a.as_dict(), wall_ms=ms, invisible=invisible)


ROLLBACK = QAItem(id="r", principal="alice", question="How do I roll back?",
                  must_contain=(("acme-deploy rollback fleet",), ("two minutes", "2 minutes")), must_cite=(DEPLOY,))
FORBIDDEN = QAItem(id="f", principal="bob", question="How do I roll back?", must_refuse=True,
                   must_never_reveal=("acme-deploy rollback",))


def test_correct_and_cited_needs_text_and_citation():
    good = score(ROLLBACK, resp(answer("Run `ACME-deploy  rollback fleet`; it takes under 2 minutes [1].",
                                       [cite(1, "engineering/deploy-process.md")])))
    assert good.correct and good.passed and good.missing == () and good.relevant_citations == 1
    missing = score(ROLLBACK, resp(answer("Run acme-deploy rollback fleet [1].", [cite(1, "engineering/deploy-process.md")])))
    assert not missing.correct and missing.missing == ("two minutes|2 minutes",)
    uncited = score(ROLLBACK, resp(answer("Run acme-deploy rollback fleet, two minutes [1].", [cite(1, "onboarding.md")])))
    assert not uncited.correct and uncited.cited_required is False and uncited.cited == ("wiki:onboarding.md",)


def test_a_wrong_citation_lowers_precision_and_a_refusal_counts_against_recall():
    right = cite(1, "engineering/deploy-process.md")
    wrong = cite(2, "onboarding.md")
    r1 = score(ROLLBACK, resp(answer("acme-deploy rollback fleet takes two minutes [1][2].", [right, wrong])))
    assert r1.correct and r1.citations == 2 and r1.relevant_citations == 1
    r2 = score(ROLLBACK, resp(answer("I don't know from the available documents.", refused=True)))  # a false refusal
    r3 = score(FORBIDDEN, resp(answer("I don't know from the available documents.", refused=True)))
    r4 = score(FORBIDDEN, resp(answer("Something else [1].", [cite(1, "product-faq.md")])))  # answered: missed refusal
    t = summarize([r1, r2, r3, r4])
    assert t.citation_precision == 0.5  # 1 relevant of 2 citations over the answerable questions
    assert t.answerable == 2 and t.correct_and_cited == 1 and t.false_refusals == 1
    assert t.refused == 2 and t.refusal_precision == 0.5  # one of the two refusals was of an answerable question
    assert t.must_refuse == 2 and t.refusal_recall == 0.5
    assert [r.passed for r in (r1, r2, r3, r4)] == [True, False, True, False]


def test_leaks_are_found_in_text_citations_sources_and_documents():
    in_text = score(FORBIDDEN, resp(answer("Use acme-deploy ROLLBACK now [1].", [cite(1, "product-faq.md")])))
    assert in_text.leaks == ("text: acme-deploy rollback",) and not in_text.passed
    in_source = score(FORBIDDEN, resp(answer("I don't know from the available documents.", refused=True,
                                             sources=[cite(1, "x.md", snippet="run acme-deploy rollback fleet")])))
    assert in_source.refused and in_source.leaks == ("source [1] snippet: acme-deploy rollback",)
    assert not in_source.passed
    hidden = score(FORBIDDEN, resp(answer("I don't know from the available documents.", refused=True),
                                   invisible=("wiki:engineering/deploy-process.md",)))
    assert hidden.leaks == ("document: wiki:engineering/deploy-process.md (not visible to bob)",)
    clean = score(FORBIDDEN, resp(answer("I don't know from the available documents.", refused=True)))
    t = summarize([in_text, in_source, hidden, clean])
    assert t.leaks == 3 and t.passed == 1


def test_unsupported_sentences_by_policy():
    c = [cite(1, "engineering/deploy-process.md")]
    text = "Run acme-deploy rollback fleet [1]. It takes two minutes [1]. Then call the CEO [unverified]."
    assert len(sentences(text)) == 3
    flag = score(ROLLBACK, resp(answer(text, c, policy="flag", verified=False, unsupported=["Then call the CEO."])))
    assert (flag.sentences, flag.unsupported_delivered, flag.dropped) == (3, 1, 0)
    drop = score(ROLLBACK, resp(answer(text.rsplit(" Then", 1)[0], c, policy="drop", unsupported=["x.", "y."])))
    assert (drop.sentences, drop.unsupported_delivered, drop.dropped) == (2, 0, 2)
    fell = score(ROLLBACK, resp(answer("Run acme-deploy rollback fleet [1].", c, policy="fallback", fallback=True,
                                       unsupported=["a.", "b.", "c."])))
    assert (fell.unsupported_delivered, fell.dropped, fell.fallback) == (0, 3, True)
    off = score(ROLLBACK, resp(answer(text, c, policy="off", verified=False)))
    assert off.unsupported_delivered is None
    t = summarize([flag, drop, fell, off])
    assert (t.sentences, t.unsupported_delivered, t.unsupported_rate) == (6, 1, round(1 / 6, 4))
    assert (t.fallbacks, t.dropped_sentences, t.unverified_answers) == (1, 5, 1)


def test_report_groups_by_backend_and_model_with_latency():
    rs = [score(FORBIDDEN, resp(answer("I don't know from the available documents.", refused=True), ms=ms),
                backend="extractive") for ms in (10, 20, 30, 40, 100)]
    report = AnswerEvalReport.build(rs, target="in-process")
    assert list(report.by_model) == ["extractive/extractive"]
    assert report.totals.latency_p50_ms == 30.0 and report.totals.latency_p95_ms == pytest.approx(88.0)
    d = json.loads(json.dumps(report.as_dict()))
    assert d["totals"]["refusal_recall"] == 1.0 and d["results"][0]["passed"] is True


# -- real runs on the Acme example ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def acme_cl(tmp_path_factory, pg_url, embedder):
    from citeline.facade import Citeline
    from citeline.settings import Settings

    root = tmp_path_factory.mktemp("qa") / "acme"
    shutil.copytree(REPO / "examples" / "acme", root, ignore=shutil.ignore_patterns(".citeline"))
    namespace = f"qa_{uuid.uuid4().hex[:10]}"
    settings = Settings.load(root / "citeline.toml", database_url=pg_url, database={"namespace": namespace},
                             generation={"backend": "extractive"})
    cl = Citeline(settings, embedder=embedder)
    cl.sync()
    cl.admin.import_principals(root / "principals.toml", actor="test")
    try:
        yield cl, root, namespace
    finally:
        cl.close()
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(namespace)))


PICK = ("firmware-test-fleet", "ticket-firmware-fix", "catalog-partner-kit", "bob-rollback", "bob-partner-kit-price",
        "unknown-canteen")


def test_in_process_run_on_acme(acme_cl):
    cl, _, _ = acme_cl
    items = [i for i in load_qa(QA) if i.id in PICK]
    seen: list[str] = []
    report = run_in_process(cl, items, on_progress=lambda done, total, r: seen.append(f"{done}/{total} {r.id}"))
    assert seen[-1] == f"{len(items)}/{len(items)} {items[-1].id}"
    by_id = {r.id: r for r in report.results}
    # a wiki page, a ticket alice's support group sees, a catalog row only partners see (an ad-hoc principal):
    # answered from the right document (whether the extractive text holds every must_contain is its quality)
    for qid in ("firmware-test-fleet", "ticket-firmware-fix", "catalog-partner-kit"):
        r = by_id[qid]
        assert r.error is None and not r.refused and r.cited_required and r.relevant_citations >= 1, r
        assert r.correct == (not r.missing)
    assert by_id["catalog-partner-kit"].user == "eval:partners"
    for qid in ("bob-rollback", "bob-partner-kit-price", "unknown-canteen"):
        assert by_id[qid].refused and by_id[qid].passed, by_id[qid]
    t = report.totals
    assert (t.leaks, t.errors, t.questions, t.answerable, t.must_refuse) == (0, 0, 6, 3, 3)
    assert t.correct_and_cited == sum(1 for r in report.results if r.correct)
    assert t.refusal_recall == 1.0 and t.refusal_precision == 1.0 and t.false_refusals == 0
    assert list(report.by_model) == ["extractive/extractive"]
    assert t.latency_p50_ms and t.latency_p50_ms > 0
    assert t.unsupported_rate is not None and t.sentences >= 3  # the default policy verifies
    # the ad-hoc principal existed only for the run
    assert "eval:partners" not in {p.user for p in cl.principals.list()}


def test_a_document_the_principal_may_not_see_is_a_leak(acme_cl):
    from citeline.evaluation.answers import _invisible

    cl, _, _ = acme_cl
    hit = cl.search("acme-deploy rollback fleet", user="alice", k=1).hits[0]
    shown = {"citations": [{"document_id": hit.document_id, "source": hit.source, "external_id": hit.external_id}]}
    assert _invisible(cl, "alice", shown) == ()
    assert _invisible(cl, "bob", shown) == (f"{hit.source}:{hit.external_id}",)


def test_cli_json(acme_cl, tmp_path):
    from citeline.cli import app

    _, root, namespace = acme_cl
    qa = tmp_path / "qa.jsonl"
    by_id = {json.loads(ln)["id"]: ln for ln in QA.read_text().splitlines()}
    qa.write_text("\n".join(by_id[i] for i in ("firmware-test-fleet", "bob-rollback", "followup-canary-wait",
                                                "deploy-days")) + "\n")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CITELINE_DATABASE_URL", acme_cl[0].settings.effective_database_url() or "")
        mp.setenv("CITELINE_DATABASE__NAMESPACE", namespace)
        mp.setenv("CITELINE_CONFIG", str(root / "citeline.toml"))
        runner = CliRunner()
        result = runner.invoke(app, ["eval", "answers", str(qa), "--backend", "extractive", "--verify", "flag",
                                     "--json", "--limit", "3"], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        out = json.loads(result.stdout)
        assert out["target"] == "in-process"
        assert [r["id"] for r in out["results"]] == ["firmware-test-fleet", "bob-rollback", "followup-canary-wait"]
        follow = out["results"][2]
        assert follow["follow_up"] and follow["error"] is None and follow["retrieval_question"]  # asked with history
        assert {r["verify_policy"] for r in out["results"] if not r["refused"]} <= {"flag"}
        assert out["results"][0]["cited_required"] and out["totals"]["refusal_recall"] == 1.0
        assert out["totals"]["leaks"] == 0 and "extractive/extractive" in out["by_model"]
        table = runner.invoke(app, ["eval", "answers", str(qa), "--backend", "extractive", "--limit", "1"],
                              catch_exceptions=False)
        assert table.exit_code == 0 and "correct-and-cited" in table.stdout and "firmware-test-fleet" in table.stdout
        bad = tmp_path / "bad.jsonl"
        bad.write_text('{"id": "x", "question": "q"}\n')
        err = runner.invoke(app, ["eval", "answers", str(bad)])
        assert err.exit_code == 1 and "bad.jsonl:1: give exactly one of principal" in " ".join(err.output.split())
        mixed = runner.invoke(app, ["eval", "answers", str(qa), "--key", "alice=cl_x"])
        assert mixed.exit_code == 1 and "go with --url" in " ".join(mixed.output.split())
