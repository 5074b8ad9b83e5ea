"""``citeline eval answers --url``: the Acme QA set asked over HTTP of a real ``citeline serve`` (extractive)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from citeline.evaluation.answers import load_qa, run_against_server
from tests.conftest import REPO

pytestmark = pytest.mark.e2e

QA = REPO / "examples" / "acme" / "qa.jsonl"
PICK = ("firmware-test-fleet", "ticket-firmware-fix", "catalog-partner-kit", "followup-secondary-carers",
        "bob-rollback", "bob-partner-kit-price", "unknown-canteen")


def test_run_against_server_with_keys_and_an_admin_key(server):
    items = [i for i in load_qa(QA) if i.id in PICK]
    keys = {u: server.keys[u] for u in ("alice", "bob", "carol")}
    report = run_against_server(server.url, items, keys, admin_key=server.keys["admin"])
    by_id = {r.id: r for r in report.results}
    assert report.totals.errors == 0, [r.error for r in report.results if r.error]
    for qid in ("firmware-test-fleet", "ticket-firmware-fix", "catalog-partner-kit", "followup-secondary-carers"):
        r = by_id[qid]
        assert not r.refused and r.cited_required, r
    assert by_id["followup-secondary-carers"].follow_up  # asked through /v1/chat/completions with its history
    assert "\n\nSources:" not in by_id["followup-secondary-carers"].answer
    for qid in ("bob-rollback", "bob-partner-kit-price", "unknown-canteen"):
        assert by_id[qid].refused and by_id[qid].passed, by_id[qid]
    assert report.totals.leaks == 0 and report.target == server.url
    assert list(report.by_model) == [f"{server.url}/extractive"]
    # the temporary key of the ad-hoc principal was revoked: a second run without the admin key has no key
    again = run_against_server(server.url, [by for by in items if by.id == "catalog-partner-kit"], keys)
    assert again.results[0].error and "no API key for 'eval:partners'" in again.results[0].error


def test_cli_with_a_keys_file(server, tmp_path):
    from citeline.cli import app

    keys = tmp_path / "keys.toml"
    keys.write_text("\n".join(f'{u} = "{server.keys[u]}"' for u in ("alice", "bob")) + "\n")
    qa = tmp_path / "qa.jsonl"
    by_id = {json.loads(ln)["id"]: ln for ln in QA.read_text().splitlines()}
    qa.write_text(by_id["firmware-test-fleet"] + "\n" + by_id["bob-rollback"] + "\n")
    result = CliRunner().invoke(app, ["eval", "answers", str(qa), "--url", server.url, "--keys-file", str(keys),
                                      "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert [r["id"] for r in out["results"]] == ["firmware-test-fleet", "bob-rollback"]
    assert out["totals"]["errors"] == 0 and out["totals"]["refusal_recall"] == 1.0
    assert out["results"][0]["cited_required"] and out["results"][1]["refused"]
    refused = CliRunner().invoke(app, ["eval", "answers", str(qa), "--url", server.url, "--backend", "extractive"])
    assert refused.exit_code == 1 and "in process only" in " ".join(refused.output.split())
