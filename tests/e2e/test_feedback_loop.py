"""The feedback loop on the Acme example, end to end (issue 19): users' feedback becomes a better team adapter,
proven against the adapter it replaces before it serves.

The real app (FastAPI in process), the real embedded PostgreSQL and embedder, the embedded SmolLM2-135M on CPU,
and the CLI for every admin step, in the order a platform engineer runs them:

1. the support team's first adapter (``adapter train`` on a slice of the hand-written support data), registered
   and promoted by an admin (``--force``: the team's first adapter, taken as it is; the loop's gate is what
   this test is about);
2. a support member asks the Acme questions; each answer is rated through ``/v1/feedback``: answers in the house
   format that cite the right evidence are up-voted, the others down-voted with a corrected answer written the
   way a support lead would (the house format, citing the evidence the answer was shown);
3. ``adapter data from-feedback`` builds the chat examples (and a held-out split of corrections);
4. ``adapter train --start-from active`` continues the active adapter on the corrections;
5. ``adapter eval`` compares it with the active adapter on the held-out corrections (format rules, similarity to
   the corrections) and on grounding; it beats it, ``adapter register`` + ``adapter promote`` (no --force), and
   the member's next answers come from the new version (the answer and its audit row name it);
6. an adapter that does worse (barely trained) is evaluated the same way and ``adapter promote`` refuses it.

Slow (several minutes of CPU training and generation); CI runs it. ``CITELINE_LOOP_QUESTIONS`` (default 24,
at most 32: one per fact card of ``examples/adapters/support/build_dataset.py``) asks more questions for the
numbers in docs/benchmarks.md: ``CITELINE_LOOP_QUESTIONS=32 pytest -s -m slow tests/e2e/test_feedback_loop.py``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
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
from citeline.lora.evaluation import format_failures, load_rules
from citeline.serving.app import create_app
from citeline.settings import Settings
from tests.conftest import REPO

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

SUPPORT = REPO / "examples" / "adapters" / "support"
RULES = load_rules(SUPPORT / "rules.toml")
MAX_TOKENS = "128"
QUESTIONS = int(os.environ.get("CITELINE_LOOP_QUESTIONS", "24"))


def _cards() -> list[Any]:
    spec = importlib.util.spec_from_file_location("support_cards", SUPPORT / "build_dataset.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return list(module.CARDS)


@dataclass
class Loop:
    cl: Citeline
    client: TestClient
    key: str
    config: Path
    root: Path

    def cli(self, *args: str) -> dict[str, Any]:
        result = CliRunner().invoke(cli_app, [*args, "--config", str(self.config), "--json"])
        assert result.exit_code == 0, f"citeline {' '.join(args)}:\n{result.output}"
        return json.loads(result.stdout.strip().splitlines()[-1])

    def cli_fails(self, *args: str) -> str:
        result = CliRunner().invoke(cli_app, [*args, "--config", str(self.config)])
        assert result.exit_code != 0, result.output
        return result.output

    def ask(self, question: str) -> dict[str, Any]:
        r = self.client.post("/v1/ask", json={"question": question}, headers={"Authorization": f"Bearer {self.key}"})
        assert r.status_code == 200, r.text
        return r.json()

    def rate(self, audit_id: int, rating: str, correction: str | None = None) -> None:
        body = {"audit_id": audit_id, "rating": rating, "reason": "not in our format" if correction else "",
                "correction": correction}
        r = self.client.post("/v1/feedback", json=body, headers={"Authorization": f"Bearer {self.key}"})
        assert r.status_code == 200, r.text


@pytest.fixture(scope="module")
def loop(pg_url: str, embedder, smollm2_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Loop]:
    root = tmp_path_factory.mktemp("loop")
    acme = root / "acme"
    shutil.copytree(REPO / "examples" / "acme", acme, ignore=shutil.ignore_patterns(".citeline"))
    namespace = f"loop_{uuid.uuid4().hex[:10]}"
    config = acme / "citeline.toml"
    config.write_text(config.read_text().replace('home = ".citeline"', f'home = "{root / "home"}"') + f"""
[database]
url = "{pg_url}"
namespace = "{namespace}"

[answer]
evidence_k = 2  # shorter prompts: CPU training time grows with them

[generation]
backend = "embedded"
max_tokens = {MAX_TOKENS}
options = {{ model = "{smollm2_dir}" }}

[adapters]
store = "{root / "store"}"
base_model_path = "{smollm2_dir}"
cache_s = 0.0
drain_s = 0.0
""")
    settings = Settings.load(config)
    try:
        with Citeline(settings, embedder=embedder) as cl:
            cl.sync()
            cl.admin.import_principals(acme / "principals.toml", actor="test")
            cl.admin.add_principal(Principal("dana", ("staff", "support"), "support"), actor="test")
            key = cl.admin.create_key("dana", actor="test").secret
            with TestClient(create_app(cl)) as client:
                yield Loop(cl, client, key, config, root)
    finally:
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(namespace)))


def _correction(card: Any, sources: list[dict[str, Any]]) -> str | None:
    """The house-format answer a support lead writes from the card's facts, citing the shown evidence."""
    n = next((s["n"] for s in sources if s["title"].lower() == card.title.lower()
              or (s["url"] or "").startswith(card.url)), None)
    if n is None:
        return None  # the fact's page was not shown: nothing to correct from
    return "\n".join([*(f"- {fact} [{n}]." for fact in card.bullets), f"Next step: {card.next_step}"])


def _train(loop: Loop, name: str, data: Path, *extra: str) -> Path:
    out = loop.root / name
    body = loop.cli("adapter", "train", "--team", "support", "--data", str(data), "--output", str(out),
                    "--threads", "2", *extra)
    assert body["completed"], body
    m = body["metrics"]
    print(f"[loop] {name}: {m['steps']:.0f} steps on {m['train_examples']:.0f} examples in {body['seconds']:.0f} s, "
          f"held-out loss {m.get('start_heldout_loss', m['base_heldout_loss']):.3f} -> {m['heldout_loss']:.3f}")
    return out


def _evaluate(loop: Loop, adapter: str, *extra: str) -> dict[str, Any]:
    return loop.cli("adapter", "eval", adapter, "--rules", str(SUPPORT / "rules.toml"), "--grounding", "--as", "dana",
                    "--max-tokens", MAX_TOKENS, *extra)


def test_feedback_becomes_a_better_adapter_that_is_promoted_and_a_worse_one_is_refused(loop: Loop):
    # 1. the team's first adapter, from a slice of the hand-written data
    rows = (SUPPORT / "train.jsonl").read_text().splitlines()
    first_data = loop.root / "first.jsonl"
    first_data.write_text("\n".join(rows[:16]) + "\n")
    first = _train(loop, "first", first_data, "--epochs", "2", "--heldout", "0.1", "--lr", "2e-3")
    v1 = loop.cli("adapter", "register", str(first), "--team", "support")["served_name"]
    loop.cli("adapter", "promote", v1, "--force")

    # 2. a support member asks; every answer is rated, the poor ones corrected
    corrected = up = 0
    cards = _cards()
    for card in (cards[::2] + cards[1::2])[:QUESTIONS]:
        answer = loop.ask(card.questions[1])
        if answer["refused"]:
            continue
        assert answer["model"] == v1  # the team's adapter answered
        correction = _correction(card, answer["sources"])
        if correction is None:
            continue
        if not format_failures(answer["answer"], RULES.rules) and any(c["title"] == card.title
                                                                      for c in answer["citations"]):
            loop.rate(answer["audit_id"], "up")
            up += 1
        else:
            loop.rate(answer["audit_id"], "down", correction)
            corrected += 1
    print(f"\n[loop] {up} answers up-voted, {corrected} corrected")
    assert corrected >= 6

    # 3. the training data
    data = loop.cli("adapter", "data", "from-feedback", "--team", "support", "--output", str(loop.root / "fb"),
                    "--heldout", "0.3")
    assert data["ok"] and data["excluded"] == {} and data["heldout"] >= 3, data
    sft, heldout = Path(data["files"]["sft"]), Path(data["files"]["sft_heldout"])

    # 4. the active adapter, continued on the corrections
    second = _train(loop, "second", sft, "--start-from", "active", "--epochs", "5", "--heldout", "0.3", "--lr", "2e-3")
    manifest = json.loads((second / "citeline_adapter.json").read_text())
    assert manifest["rank"] == 8 and manifest["team"] == "support"

    # 5. evaluated against the active adapter on the held-out corrections: it beats it, and is promoted
    report = _evaluate(loop, str(second))
    scores, grounding = report["scores"], report["grounding"]
    print(f"[loop] held-out corrections: {report['examples']}; compliance / ROUGE-L: new "
          f"{scores['adapter']['compliance']:.0%} / {scores['adapter']['similarity']:.3f}, current "
          f"{scores['current']['compliance']:.0%} / {scores['current']['similarity']:.3f}, baseline "
          f"{scores['baseline']['compliance']:.0%} / {scores['baseline']['similarity']:.3f}; grounded "
          f"{grounding['adapter_share']:.0%} new, {grounding['current_share']:.0%} current, "
          f"{grounding['base_share']:.0%} base")
    assert report["current"] == v1 and report["decision"]["promote"], report["decision"]
    assert scores["adapter"]["compliance"] >= scores["current"]["compliance"]
    assert scores["adapter"]["similarity"] > scores["current"]["similarity"]
    assert grounding["adapter_share"] >= grounding["current_share"]
    v2 = loop.cli("adapter", "register", str(second), "--team", "support")["served_name"]
    promoted = loop.cli("adapter", "promote", v2)
    assert promoted["previous"] == v1

    after = loop.ask(_cards()[0].questions[2])
    assert after["model"] == v2
    (row,) = [r for r in loop.cl.audit.records(kind="ask") if r.id == after["audit_id"]]
    assert row.payload["model"] == v2

    # 6. a worse adapter (one short step on a few examples), registered, then evaluated by its served name the
    # same way (into its stored copy; the registry's numbers follow, audited): promote refuses it
    worse_data = loop.root / "worse.jsonl"
    worse_data.write_text("\n".join(rows[40:50]) + "\n")
    worse = _train(loop, "worse", worse_data, "--epochs", "1", "--batch-size", "8", "--lr", "1e-5")
    served = loop.cli("adapter", "register", str(worse), "--team", "support")["served_name"]
    bad = _evaluate(loop, served, "--heldout-file", str(heldout))
    assert bad["current"] == v2 and not bad["decision"]["promote"]
    assert any(r.startswith(f"does not beat the team's current adapter {v2}") for r in bad["decision"]["reasons"])
    recorded = loop.cl.adapters.require(served).metrics
    assert recorded["current_format_compliance"] == bad["scores"]["current"]["compliance"]
    assert [r.payload["adapter"] for r in loop.cl.audit.records(kind="admin") if r.action == "adapter.evaluate"] == [
        served]
    refused = loop.cli_fails("adapter", "promote", served)
    assert "not promoted" in refused and f"current adapter {v2}" in refused
    assert loop.cl.adapters.active("support").served_name == v2  # nothing changed
