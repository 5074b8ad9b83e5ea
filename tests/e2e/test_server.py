"""The server end to end: a real `citeline serve` process, the official openai client, httpx, real SQL."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import httpx
import openai
import pytest

from citeline.answers.prompt import REFUSAL

pytestmark = pytest.mark.e2e

DEPLOY = "how do I roll back a bad deploy"


def client(server, user: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=server.keys[user], max_retries=0, timeout=60)


def ask(server, user: str, question: str, **body) -> httpx.Response:
    return httpx.post(f"{server.url}/v1/ask", json={"question": question, **body},
                      headers={"Authorization": f"Bearer {server.keys[user]}"}, timeout=60)


def sse_events(response: httpx.Response) -> list[tuple[str, dict]]:
    events, name = [], "message"
    for line in response.text.splitlines():
        if line.startswith("event: "):
            name = line[7:]
        elif line.startswith("data: ") and line != "data: [DONE]":
            events.append((name, json.loads(line[6:])))
            name = "message"
    return events


def visible_documents(server, user: str) -> set[int]:
    """Document ids the principal may see, straight from the ACL columns (as the owner, no RLS)."""
    rows = server.owner_sql("SELECT d.id FROM documents d, principals p WHERE p.user_id = %s"
                            " AND (d.public OR d.acl && p.tokens)", user)
    return {r[0] for r in rows}


def audit_count(server) -> int:
    return server.owner_sql("SELECT count(*) FROM audit_log")[0][0]


def test_openai_client_non_streaming_answer_cites_sources(server):
    resp = client(server, "alice").chat.completions.create(
        model="citeline", messages=[{"role": "user", "content": DEPLOY}])
    text = resp.choices[0].message.content
    extra = resp.model_extra or {}
    assert re.search(r"\[\d\]", text) and "Sources:" in text and "acme-deploy rollback fleet" in text
    assert extra["refused"] is False and extra["citations"]
    assert extra["verified"] is True and extra["verify_policy"] == "fallback" and extra["unsupported"] == []
    assert any(c["external_id"] == "engineering/deploy-process.md" for c in extra["citations"])
    assert all(f"[{c['n']}]" in text for c in extra["citations"])


def test_openai_client_streaming_matches_and_ends_with_citations(server):
    stream = client(server, "alice").chat.completions.create(
        model="citeline", messages=[{"role": "user", "content": DEPLOY}], stream=True)
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    last = chunks[-1]
    assert last.choices[0].finish_reason == "stop"
    cited = (last.model_extra or {})["citations"]
    assert cited and "Sources:" in text
    plain = client(server, "alice").chat.completions.create(
        model="citeline", messages=[{"role": "user", "content": DEPLOY}])
    assert text.strip() == plain.choices[0].message.content.strip()  # extractive backend: deterministic


def test_two_users_see_only_their_own_documents_in_answer_citations_and_stream(server):
    alice = ask(server, "alice", DEPLOY).json()
    bob = ask(server, "bob", DEPLOY).json()
    assert any(c["external_id"] == "engineering/deploy-process.md" for c in alice["citations"])
    bob_visible = visible_documents(server, "bob")
    assert {c["document_id"] for c in bob["sources"] + bob["citations"]} <= bob_visible
    restricted = server.owner_sql(
        "SELECT c.text FROM chunks c JOIN documents d ON d.id = c.document_id WHERE NOT (d.id = ANY(%s))",
        list(bob_visible))
    assert restricted
    streamed = httpx.post(f"{server.url}/v1/ask", json={"question": DEPLOY, "stream": True},
                          headers={"Authorization": f"Bearer {server.keys['bob']}"}, timeout=60)
    events = sse_events(streamed)
    names = [e[0] for e in events]
    assert names[0] == "sources" and names[-1] == "done"
    shown = {s["document_id"] for s in events[0][1]["sources"]}
    assert shown <= bob_visible
    raw = streamed.text
    for (text,) in restricted:  # no sentence of a document bob may not see reaches him in any form
        for sentence in (s.strip() for s in text.split(". ")):
            if len(sentence) > 40 and not any(sentence in t for (t,) in server.owner_sql(
                    "SELECT c.text FROM chunks c WHERE c.document_id = ANY(%s)", list(bob_visible))):
                assert sentence not in raw and sentence not in bob["answer"]


def test_unanswerable_question_is_refused_without_the_model(server):
    body = ask(server, "alice", "what is the capital of Mongolia").json()
    assert body["refused"] is True and body["answer"] == REFUSAL
    assert "generate_ms" not in body["latency_ms"]
    assert body["citations"] == [] and len(body["sources"]) <= 3


def test_planted_instruction_cannot_change_the_rules_or_widen_access(server):
    body = ask(server, "bob", "how do I set up the office printer").json()
    assert any(s["external_id"] == "office-printer.md" for s in body["sources"])  # the planted page is evidence
    hr = {r[0] for r in server.owner_sql("SELECT id FROM documents WHERE external_id LIKE 'hr/%%'")}
    assert not hr & {s["document_id"] for s in body["sources"]}
    assert "£48,000" not in body["answer"] and "80,000" not in body["answer"]  # real salary data never shown
    assert "[9]" not in body["answer"]  # the planted citation of evidence that does not exist is removed
    assert all(1 <= c["n"] <= len(body["sources"]) for c in body["citations"])


@pytest.mark.parametrize("header", [None, "Bearer", "Bearer not-a-key", "Bearer cl_aaaaaaaaaaaa_" + "x" * 43,
                                    "Basic dXNlcjpwYXNz"])
def test_missing_or_bad_key_is_401_and_retrieves_nothing(server, header):
    before = audit_count(server)
    headers = {"Authorization": header} if header else {}
    for method, path, body in [("POST", "/v1/ask", {"question": DEPLOY}),
                               ("POST", "/v1/chat/completions", {"model": "citeline",
                                                                 "messages": [{"role": "user", "content": DEPLOY}]}),
                               ("GET", "/v1/models", None)]:
        r = httpx.request(method, f"{server.url}{path}", json=body, headers=headers, timeout=30)
        assert r.status_code == 401, (path, r.text)
        assert "deploy" not in r.text.lower()
    assert audit_count(server) == before


def test_openai_client_with_a_bad_key_raises_authentication_error(server):
    bad = openai.OpenAI(base_url=f"{server.url}/v1", api_key="cl_bbbbbbbbbbbb_" + "y" * 43, max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.chat.completions.create(model="citeline", messages=[{"role": "user", "content": DEPLOY}])


def test_admin_endpoints_need_an_admin_key_and_are_audited(server):
    r = httpx.post(f"{server.url}/v1/admin/keys", json={"user": "bob"},
                   headers={"Authorization": f"Bearer {server.keys['bob']}"})
    assert r.status_code == 403 and "admin key" in r.json()["error"]["message"]
    r = httpx.post(f"{server.url}/v1/admin/keys", json={"user": "bob", "label": "second"},
                   headers={"Authorization": f"Bearer {server.keys['admin']}"})
    assert r.status_code == 200
    new = r.json()
    assert ask(server, "bob", "what is the return policy").status_code == 200
    h = {"Authorization": f"Bearer {new['key']}"}
    assert httpx.post(f"{server.url}/v1/ask", json={"question": "return policy"}, headers=h).status_code == 200
    r = httpx.delete(f"{server.url}/v1/admin/keys/{new['key_id']}",
                     headers={"Authorization": f"Bearer {server.keys['admin']}"})
    assert r.status_code == 200
    assert httpx.post(f"{server.url}/v1/ask", json={"question": "return policy"}, headers=h).status_code == 401
    actions = [r[0] for r in server.owner_sql("SELECT action FROM audit_log WHERE kind = 'admin' ORDER BY id")]
    assert actions[-2:] == ["key.create", "key.revoke"]
    assert server.owner_sql("SELECT secret_hash FROM api_keys WHERE key_id = %s", new["key_id"])[0][0] \
        not in new["key"]  # only a hash is stored


def test_every_answer_is_audited_with_what_was_shown(server):
    before = audit_count(server)
    body = ask(server, "alice", DEPLOY).json()
    (row,) = server.owner_sql("SELECT principal, team, action, payload FROM audit_log WHERE id = %s",
                              body["audit_id"])
    principal, team, action, payload = row
    assert (principal, team, action) == ("alice", "engineering", "answer")
    assert payload["question"] == DEPLOY and payload["refused"] is False
    assert [s["chunk_id"] for s in payload["shown"]] == [s["chunk_id"] for s in body["sources"]]
    assert payload["answer"] == body["answer"]
    assert audit_count(server) == before + 1


def test_answer_is_withheld_when_the_audit_row_cannot_be_written(server):
    server.owner_sql("REVOKE INSERT ON audit_log FROM citeline_writer")
    try:
        r = ask(server, "alice", DEPLOY)
        assert r.status_code == 503
        assert r.json()["error"]["code"] == "audit_unavailable"
        assert "roll" not in r.text.lower()
        s = httpx.post(f"{server.url}/v1/ask", json={"question": DEPLOY, "stream": True},
                       headers={"Authorization": f"Bearer {server.keys['alice']}"}, timeout=60)
        assert s.status_code == 503 and "event: delta" not in s.text
    finally:
        server.owner_sql("GRANT INSERT ON audit_log TO citeline_writer")
    assert ask(server, "alice", DEPLOY).status_code == 200


def _cli(server, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", "from citeline.cli import main; main()", *args],
                          env=server.env, capture_output=True, text=True, timeout=120)


def test_audit_verify_detects_an_edited_and_a_deleted_row(server):
    ask(server, "bob", "what is the return policy")
    ask(server, "alice", DEPLOY)
    ok = _cli(server, "audit", "verify", "--json")
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["ok"] is True
    exported = _cli(server, "audit", "export", "--format", "jsonl")
    rows = [json.loads(line) for line in exported.stdout.splitlines()]
    assert len(rows) == json.loads(ok.stdout)["rows"] and rows[-1]["hash"] == json.loads(ok.stdout)["head"]
    victim = rows[-2]["id"]
    server.owner_sql("UPDATE audit_log SET principal = 'mallory' WHERE id = %s", victim)
    bad = _cli(server, "audit", "verify")
    assert bad.returncode == 1 and f"row {victim}" in bad.stderr
    server.owner_sql("UPDATE audit_log SET principal = %s WHERE id = %s", rows[-2]["principal"], victim)
    assert _cli(server, "audit", "verify").returncode == 0  # restored exactly: intact again
    server.owner_sql("DELETE FROM audit_log WHERE id = %s", rows[-3]["id"])
    deleted = _cli(server, "audit", "verify")
    assert deleted.returncode == 1 and "deleted" in deleted.stderr
    csv_out = _cli(server, "audit", "export", "--format", "csv")
    assert csv_out.stdout.startswith("id,at,kind,principal")


def test_models_health_ready_and_metrics(server):
    models = client(server, "alice").models.list()
    assert [m.id for m in models.data][:2] == ["citeline", "extractive"]
    assert httpx.get(f"{server.url}/healthz").json() == {"status": "ok"}
    assert httpx.get(f"{server.url}/readyz").json()["status"] == "ready"
    r = ask(server, "alice", DEPLOY)
    latency = r.json()["latency_ms"]
    assert {"auth_ms", "embed_ms", "retrieve_ms", "prompt_ms", "audit_ms", "total_ms"} <= set(latency)
    assert latency["total_ms"] >= latency["retrieve_ms"] + latency["audit_ms"]
    in_server = float(r.headers["server-timing"].removeprefix("app;dur="))  # the app's whole time, to first byte
    assert in_server >= latency["total_ms"] + latency["auth_ms"]
    text = httpx.get(f"{server.url}/metrics").text
    assert 'citeline_requests_total{endpoint="/v1/ask",status="200"}' in text
    for stage in ("auth", "retrieve", "audit"):
        assert f'citeline_stage_latency_seconds_count{{stage="{stage}"}}' in text
    assert "citeline_answers_total" in text and "citeline_db_pool_size" in text
    assert 'citeline_answer_verification_total{outcome="verified",policy="fallback"}' in text
    assert 'citeline_stage_latency_seconds_count{stage="verify"}' in text
    rss = re.search(r"^process_resident_memory_bytes ([\d.e+]+)$", text, re.M)  # the server's own memory
    assert rss and 100 * 2**20 < float(rss.group(1)) < 8 * 2**30, rss
    body = r.json()
    assert body["verified"] is True and body["verify_policy"] == "fallback" and body["unsupported"] == []


def test_chat_page_is_served_with_security_headers(server):
    r = httpx.get(f"{server.url}/")
    assert r.status_code == 200 and "<html" in r.text.lower()
    assert r.headers["x-frame-options"] == "DENY" and r.headers["x-content-type-options"] == "nosniff"


def test_invalid_requests_get_openai_shaped_errors(server):
    h = {"Authorization": f"Bearer {server.keys['alice']}"}
    r = httpx.post(f"{server.url}/v1/ask", json={"question": ""}, headers=h)
    assert r.status_code == 422 and "question" in r.json()["error"]["message"]
    with pytest.raises(openai.UnprocessableEntityError):
        client(server, "alice").chat.completions.create(model="citeline", messages=[])
