"""Feedback on answers through the real app (FastAPI in process, the real embedded PostgreSQL, the real
embedder, the extractive backend, the real audit chain), and the training data built from it.

Only the asker may rate an answer; hostile bodies get clean 4xx answers; feedback is audited, counted in
/metrics per team and model, reported by `citeline feedback report`; `citeline adapter data from-feedback`
writes chat examples and preference pairs, leaving out answers whose evidence the team can no longer see.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient
from psycopg import sql
from typer.testing import CliRunner

from citeline.cli import app as cli_app
from citeline.domain import Principal
from citeline.facade import Citeline
from citeline.serving.app import create_app
from citeline.settings import Settings
from citeline.workflows import feedback_training_data
from tests.e2e.conftest import free_port, wait_ready

pytestmark = pytest.mark.integration

GRIPPER = "How long is the warranty on the vacuum gripper?"
REFUND = "How do refunds for the support contract work?"


@pytest.fixture(scope="module")
def wiki(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("wiki")
    (root / "gripper.md").write_text("# Vacuum gripper\n\nThe vacuum gripper has a warranty of two years. "
                                     "Returns are accepted within thirty days of delivery.\n")
    (root / "refunds.md").write_text("---\naccess: {groups: [support], public: false}\n---\n# Support contract refunds\n\n"
                                     "Refunds for the support contract are paid pro rata within ten working days.\n")
    return root


@pytest.fixture
def env(pg_url: str, embedder, wiki: Path, tmp_path: Path, monkeypatch) -> Iterator[dict[str, Any]]:
    config = tmp_path / "citeline.toml"
    config.write_text(f'home = "{tmp_path / "home"}"\n\n[[sources]]\nname = "wiki"\nconnector = "folder"\n'
                      f'config = {{ path = "{wiki}" }}\naccess = {{ public = true }}\n\n'
                      '[generation]\nbackend = "extractive"\n\n[answer]\nmin_score = -1.0\n')
    namespace = f"fb_{uuid.uuid4().hex[:10]}"
    monkeypatch.setenv("CITELINE_DATABASE_URL", pg_url)  # the workflow opens its own Citeline from the config
    monkeypatch.setenv("CITELINE_DATABASE__NAMESPACE", namespace)
    settings = Settings.load(config)
    try:
        with Citeline(settings, embedder=embedder) as cl:
            cl.sync()
            for user, groups, team in (("alice", ("support",), "support"), ("bob", ("support",), "support"),
                                       ("carol", ("sales",), "sales")):
                cl.admin.add_principal(Principal(user, groups, team), actor="test")
            keys = {u: cl.admin.create_key(u, actor="test").secret for u in ("alice", "bob", "carol")}
            with TestClient(create_app(cl)) as client:
                yield {"cl": cl, "client": client, "keys": keys, "config": config}
    finally:
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(namespace)))


def _h(env: dict[str, Any], user: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {env['keys'][user]}"}


def _ask(env: dict[str, Any], user: str, question: str) -> dict[str, Any]:
    r = env["client"].post("/v1/ask", json={"question": question}, headers=_h(env, user))
    assert r.status_code == 200, r.text
    return r.json()


def _streamed_audit_id(env: dict[str, Any], user: str, question: str) -> int:
    with env["client"].stream("POST", "/v1/ask", json={"question": question, "stream": True},
                              headers=_h(env, user)) as r:
        events = [line for line in r.iter_lines() if line.startswith("data: ")]
    return int(json.loads(events[0][6:])["audit_id"])  # the `sources` event carries it


def _feedback(env: dict[str, Any], user: str, **body: Any) -> Any:
    return env["client"].post("/v1/feedback", json=body, headers=_h(env, user))


def test_the_asker_rates_an_answer_audited_counted_and_reported(env):
    answer = _ask(env, "alice", GRIPPER)
    r = _feedback(env, "alice", audit_id=answer["audit_id"], rating="down", reason="  too long ",
                  correction="The warranty is two years [1].")
    assert r.status_code == 200, r.text
    saved = r.json()
    assert saved["rating"] == "down" and saved["reason"] == "too long" and saved["team"] == "support"
    assert saved["model"] == answer["model"] and saved["correction"] == "The warranty is two years [1]."
    again = _feedback(env, "alice", audit_id=answer["audit_id"], rating="up").json()  # replaces it
    assert again["id"] == saved["id"] and again["rating"] == "up" and again["correction"] is None
    cl = env["cl"]
    rows = [r for r in cl.audit.records(kind="feedback")]
    assert [(r.action, r.principal, r.team, r.payload["rating"]) for r in rows] == [
        ("feedback.give", "alice", "support", "down"), ("feedback.give", "alice", "support", "up")]
    assert rows[0].payload["answer_audit_id"] == answer["audit_id"] and rows[0].payload["correction"]
    assert cl.audit.verify().ok
    (summary,) = cl.feedback.report()
    assert (summary.team, summary.model, summary.up, summary.down, summary.corrected) == (
        "support", answer["model"], 1, 0, 0)
    metrics = env["client"].get("/metrics").text
    labels = {'team="support"', f'model="{answer["model"]}"', 'rating="down"', 'corrected="yes"'}
    assert [line for line in metrics.splitlines() if line.startswith("citeline_feedback_total{")
            and set(line[line.index("{") + 1:line.index("}")].split(",")) == labels and line.endswith(" 1.0")]
    out = CliRunner().invoke(cli_app, ["feedback", "report", "--team", "support", "--json",
                                       "--config", str(env["config"])])
    assert out.exit_code == 0, out.output
    assert json.loads(out.output)["rows"][0]["up"] == 1


def test_no_one_rates_another_principals_answer_and_hostile_bodies_get_clean_4xx(env):
    mine = _ask(env, "alice", GRIPPER)["audit_id"]
    admin_row = next(r.id for r in env["cl"].audit.records(kind="admin"))
    for user, audit_id in (("bob", mine), ("carol", mine), ("alice", admin_row), ("alice", mine + 10_000)):
        r = _feedback(env, user, audit_id=audit_id, rating="down", correction="forged")
        assert r.status_code == 404, (user, audit_id, r.text)
        assert r.json()["error"]["type"] == "invalid_request_error"
    hostile = [({"audit_id": mine, "rating": "up", "correction": "x" * 16001}, 422),
               ({"audit_id": mine, "rating": "up", "reason": "r" * 2001}, 422),
               ({"audit_id": mine, "rating": "up", "correction": "bad\u0000text"}, 400),
               ({"audit_id": mine, "rating": "meh"}, 422), ({"audit_id": 0, "rating": "up"}, 422),
               ({"audit_id": 2**70, "rating": "up"}, 422), ({"audit_id": "1; DROP TABLE feedback", "rating": "up"}, 422),
               ({"rating": "up"}, 422)]
    for body, status in hostile:
        r = env["client"].post("/v1/feedback", json=body, headers=_h(env, "alice"))
        assert r.status_code == status, (body if len(str(body)) < 200 else "long", r.text[:200])
    assert env["client"].post("/v1/feedback", json={"audit_id": mine, "rating": "up"}).status_code == 401
    assert env["cl"].feedback.report() == []  # nothing was stored by any of it
    assert not list(env["cl"].audit.records(kind="feedback"))


def test_training_data_from_feedback_excludes_evidence_the_team_no_longer_sees(env, smollm2_dir, tmp_path):
    cl = env["cl"]
    streamed = _streamed_audit_id(env, "alice", REFUND)  # shows the support-only refunds page
    assert _feedback(env, "alice", audit_id=streamed, rating="down", reason="missing the deadline",
                     correction="Refunds are paid pro rata within ten working days [1].").status_code == 200
    up = _ask(env, "bob", GRIPPER)
    assert _feedback(env, "bob", audit_id=up["audit_id"], rating="up").status_code == 200
    carol = _ask(env, "carol", GRIPPER)
    assert all("refunds" not in s["title"].lower() for s in carol["sources"])  # the page is support's only
    assert _feedback(env, "carol", audit_id=carol["audit_id"], rating="up").status_code == 200  # team sales
    rated = {a.audit_id: a for a in cl.feedback.rated_answers("support")}
    assert set(rated) == {streamed, up["audit_id"]}
    assert rated[streamed].answer  # a streamed answer's text comes from its closing audit row

    data, report, files = feedback_training_data("support", tmp_path / "d1", base=smollm2_dir,
                                                 config=env["config"], heldout=0.0)
    # the gripper answer may be dropped as a near duplicate of the correction (check-data's rule: the prompts
    # share most of their evidence); the correction comes first, so it is the one kept
    assert data.excluded == {} and len(data.examples) + data.duplicates == 2
    assert [p.kind.value for p in report.problems] == ["too_few"]  # 2 examples: adapter train wants 8
    lines = [json.loads(x) for x in files["sft"].read_text().splitlines()]
    corrected = next(x for x in lines if x["feedback"]["target"] == "corrected")
    assert corrected["messages"][-1]["content"].startswith("Refunds are paid pro rata")
    assert "Support contract refunds" in corrected["messages"][1]["content"]  # the evidence as shown
    assert all("sales" not in json.dumps(x) and x["feedback"]["audit_id"] != carol["audit_id"] for x in lines)
    pairs = [json.loads(x) for x in files["pairs"].read_text().splitlines()]
    assert [(p["chosen"][0]["content"][:7], p["feedback"]["rejected_from"]) for p in pairs] == [("Refunds", streamed)]

    cl.admin.add_principal(Principal("bob", ("staff",), "support"), actor="test")  # bob may no longer see refunds
    data, _, files = feedback_training_data("support", tmp_path / "d2", base=smollm2_dir, config=env["config"],
                                            heldout=0.0)
    # the refunds answer is left out (and the gripper answer too if it showed the refunds page as well)
    assert data.excluded["evidence_not_visible"] >= 1 and set(data.excluded) == {"evidence_not_visible"}
    assert "pro rata" not in files["sft"].read_text() and files["pairs"].read_text() == ""


@pytest.fixture
def model_server(smollm2_dir, tmp_path) -> Iterator[str]:
    """`citeline model-server` (the embedded SmolLM2) on loopback: the drafting model's OpenAI-compatible API."""
    port, log = free_port(), tmp_path / "model-server.log"
    env = {**os.environ, "CITELINE_GENERATION__OPTIONS__MODEL": str(smollm2_dir),
           "CITELINE_GENERATION__BACKEND": "embedded", "CITELINE_HOME": str(tmp_path / "ms")}
    for name in ("CITELINE_DATABASE_URL", "CITELINE_DATABASE__NAMESPACE"):
        env.pop(name, None)
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-c", "from citeline.cli import main; main()", "model-server",
                                 "--port", str(port)], env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        wait_ready(f"http://127.0.0.1:{port}", proc, log, path="/health")
        yield f"http://127.0.0.1:{port}"  # without /v1: the drafter adds it
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


@pytest.mark.slow
def test_drafted_corrections_come_from_the_model_server_and_are_kept_for_review(env, smollm2_dir, model_server,
                                                                                 tmp_path):
    down = _ask(env, "alice", GRIPPER)["audit_id"]
    assert _feedback(env, "alice", audit_id=down, rating="down", reason="say the number of years").status_code == 200
    data, _, files = feedback_training_data("support", tmp_path / "d", base=smollm2_dir, config=env["config"],
                                            draft_with=model_server, heldout=0.0)
    (draft,) = [json.loads(x) for x in files["drafts"].read_text().splitlines()]
    assert draft["draft"] is True and draft["feedback"]["audit_id"] == down
    assert draft["messages"][-1]["role"] == "assistant" and draft["messages"][-1]["content"].strip()
    assert draft["messages"][:-1][1]["content"].endswith(f"Question: {GRIPPER}")  # the prompt as shown
    assert files["sft"].read_text() == ""  # a down-vote without a person's correction trains nothing
    out = CliRunner().invoke(cli_app, ["adapter", "data", "from-feedback", "--team", "support", "-o",
                                       str(tmp_path / "cli"), "--base", str(smollm2_dir), "--draft-with",
                                       "http://127.0.0.1:9", "--config", str(env["config"])])
    assert out.exit_code == 1 and "--draft-with http://127.0.0.1:9" in out.output  # a dead endpoint: a clean error
