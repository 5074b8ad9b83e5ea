"""A team adapter on a backend that serves none (issue 13, item 10d).

With the ``extractive`` backend, a team whose adapter is registered and promoted used to get 502 for every
answer (the router picked the adapter, the backend answered as ``extractive``, the mismatch check refused
it) and its streams were audited as coming from the adapter. Now the adapter is ignored with a note in
the answer, the answer is 200, and the audit rows (whole and streamed) record the model that answered.
Real server, real database, a real (tiny, random) LoRA adapter on the real SmolLM2 base.
"""

from __future__ import annotations

import json
import time

import httpx
import pytest

from citeline.facade import Citeline
from citeline.settings import Settings
from tests.e2e.conftest import Server
from tests.support.adapters import make_adapter

pytestmark = [pytest.mark.security, pytest.mark.e2e]

DEPLOY = "how do I roll back a bad deploy"


def _events(text: str) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for block in text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        if "event" in lines:
            out[lines["event"]] = json.loads(lines["data"])
    return out


def _audited_model(server: Server, audit_id: int) -> tuple[str, str | None]:
    rows = server.owner_sql("SELECT payload->>'model', payload->>'model_note' FROM audit_log WHERE id = %s", audit_id)
    assert rows, f"no audit row {audit_id}"
    return rows[0]


@pytest.fixture(scope="module")
def promoted(server: Server, smollm2_dir, embedder, tmp_path_factory) -> str:
    adapter_dir = make_adapter(smollm2_dir, tmp_path_factory.mktemp("adapter") / "eng", seed=5)
    settings = Settings.load(server.config, database_url=server.pg_url, database={"namespace": server.namespace},
                             generation={"backend": "extractive"},
                             adapters={"base_model_path": str(smollm2_dir)})
    with Citeline(settings, embedder=embedder) as cl:
        adapter = cl.adapters.register(adapter_dir, team="engineering", actor="test")
        cl.adapters.promote(adapter.served_name, actor="test", force=True, drain_s=0)
    time.sleep(1.5)  # the server's router caches the team -> adapter mapping for adapters.cache_s (1 s)
    return adapter.served_name


def test_team_adapter_on_the_extractive_backend_is_ignored_with_a_note(server: Server, promoted: str) -> None:
    h = {"Authorization": f"Bearer {server.keys['alice']}"}  # alice is in team engineering
    r = httpx.post(f"{server.url}/v1/ask", json={"question": DEPLOY}, headers=h, timeout=60)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "extractive" and not body["refused"] and body["citations"]
    assert promoted in body["model_note"] and "extractive" in body["model_note"], body["model_note"]
    model, note = _audited_model(server, body["audit_id"])
    assert model == "extractive" and promoted in (note or "")

    s = httpx.post(f"{server.url}/v1/ask", json={"question": DEPLOY, "stream": True}, headers=h, timeout=60)
    assert s.status_code == 200, s.text
    events = _events(s.text)
    assert "error" not in events and "done" in events, s.text[:500]
    assert events["sources"]["model"] == "extractive" and promoted in events["sources"]["model_note"]
    assert events["done"]["model"] == "extractive" and events["done"]["answer"] == body["answer"]
    assert _audited_model(server, events["sources"]["audit_id"])[0] == "extractive"  # the stream's row too

    c = httpx.post(f"{server.url}/v1/chat/completions", headers=h, timeout=60,
                   json={"model": "citeline", "messages": [{"role": "user", "content": DEPLOY}]})
    assert c.status_code == 200, c.text
    assert c.json()["served_model"] == "extractive" and promoted in c.json()["model_note"]


def test_naming_the_adapter_on_the_extractive_backend_is_answered_by_the_base(server: Server, promoted: str) -> None:
    h = {"Authorization": f"Bearer {server.keys['alice']}"}
    r = httpx.post(f"{server.url}/v1/ask", json={"question": DEPLOY, "model": promoted}, headers=h, timeout=60)
    assert r.status_code == 200, r.text
    assert r.json()["model"] == "extractive" and promoted in r.json()["model_note"]
    # another team still may not name it
    b = httpx.post(f"{server.url}/v1/ask", json={"question": DEPLOY, "model": promoted}, timeout=60,
                   headers={"Authorization": f"Bearer {server.keys['bob']}"})
    assert b.status_code == 403, b.text
