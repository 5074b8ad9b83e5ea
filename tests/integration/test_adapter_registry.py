"""The adapter registry against the real database, and hot swap in process on the real embedded backend."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from citeline.access.audit import AuditLog
from citeline.access.principals import PrincipalStore
from citeline.answers.assistant import Assistant
from citeline.domain import Access, Principal
from citeline.errors import AdapterError, ForbiddenError
from citeline.generation.local import EmbeddedBackend
from citeline.ingest.sync import SyncRunner
from citeline.lora.promotion import promotion_problems
from citeline.lora.registry import AdapterRegistry, adapter_version
from citeline.lora.rollout import promote, reconcile
from citeline.lora.routing import AdapterRouter
from citeline.retrieval.search import Retriever
from citeline.settings import AnswerSettings, GenerationSettings
from tests.support.adapters import make_adapter, with_metrics
from tests.support.connectors import ListConnector, doc

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MAX_RANK = 16
ALICE = Principal("alice", ("staff",), team="support")
BOB = Principal("bob", ("staff",), team="sales")


@pytest.fixture(scope="module")
def adapters(smollm2_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("adapters")
    made = {"v1": make_adapter(smollm2_dir, root / "v1", seed=1), "v2": make_adapter(smollm2_dir, root / "v2", seed=2),
            "sales": make_adapter(smollm2_dir, root / "sales", seed=3)}
    made["wide"] = make_adapter(smollm2_dir, root / "wide", rank=2 * MAX_RANK, seed=4)
    return made


@pytest.fixture
def registry(db, tmp_path: Path) -> AdapterRegistry:
    return AdapterRegistry(db, tmp_path / "store")


def register(registry: AdapterRegistry, path: Path, team: str, base: Path):
    return registry.register(path, team=team, name=team, base_model_dir=base, max_rank=MAX_RANK, actor="test")[0]


def test_versions_are_content_hashes_and_registration_is_idempotent(registry, adapters, smollm2_dir):
    v1 = register(registry, adapters["v1"], "support", smollm2_dir)
    assert v1.version == adapter_version(adapters["v1"])[:12] and v1.served_name == f"support-{v1.version}"
    assert v1.status == "registered" and v1.rank == 8 and set(v1.target_modules) == {"q_proj", "v_proj"}
    assert v1.path.is_dir() and v1.path.parent == registry.store  # an immutable copy the servers load from
    again, new = registry.register(adapters["v1"], team="support", name="support", base_model_dir=smollm2_dir,
                                   max_rank=MAX_RANK, actor="test")
    assert (again.id, new) == (v1.id, False)
    v2 = register(registry, adapters["v2"], "support", smollm2_dir)
    assert v2.version != v1.version and v2.served_name != v1.served_name  # re-trained: a new served name


def test_a_stale_copy_in_the_store_is_swapped_whole(registry, adapters, smollm2_dir):
    """A folder left under the served name without a row (a registration whose row failed, another base): the
    new copy replaces it by renames, and nothing temporary or old is left in the store."""
    served = f"support-{adapter_version(adapters['v1'])[:12]}"
    stale = registry.store / served
    shutil.copytree(adapters["v1"], stale)
    config = json.loads((stale / "adapter_config.json").read_text())
    (stale / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": "/old/base"}))
    got, new = registry.register(adapters["v1"], team="support", name="support", base_model_dir=smollm2_dir,
                                 max_rank=MAX_RANK, actor="test", served_base=f"/new/{smollm2_dir.name}")
    assert new and got.path == stale
    assert json.loads((stale / "adapter_config.json").read_text())["base_model_name_or_path"] == \
        f"/new/{smollm2_dir.name}"
    assert sorted(p.name for p in registry.store.iterdir()) == [served]


def test_preflight_refuses_before_anything_is_stored(registry, adapters, smollm2_dir, tmp_path):
    with pytest.raises(AdapterError, match="rank_too_high"):
        register(registry, adapters["wide"], "support", smollm2_dir)
    saved = tmp_path / "saves-lm-head"
    shutil.copytree(adapters["v1"], saved)
    config = json.loads((saved / "adapter_config.json").read_text())
    (saved / "adapter_config.json").write_text(json.dumps({**config, "modules_to_save": ["lm_head"]}))
    with pytest.raises(AdapterError, match="modules_to_save"):
        register(registry, saved, "support", smollm2_dir)
    assert registry.list() == [] and not registry.store.exists()


def test_one_active_adapter_per_team_and_the_promotion_gate(registry, adapters, smollm2_dir, tmp_path):
    v1 = register(registry, adapters["v1"], "support", smollm2_dir)
    assert "no evaluation results" in promotion_problems(v1)[0]
    worse = with_metrics(shutil.copytree(adapters["v2"], tmp_path / "worse"), smollm2_dir,
                         format_compliance=0.4, baseline_format_compliance=0.6)
    better = with_metrics(shutil.copytree(adapters["sales"], tmp_path / "better"), smollm2_dir,
                          format_compliance=0.9, baseline_format_compliance=0.6, grounding=0.8,
                          baseline_grounding=0.9)
    w, b = register(registry, worse, "support", smollm2_dir), register(registry, better, "support", smollm2_dir)
    assert "does not beat the prompting baseline" in promotion_problems(w)[0]
    assert any("grounding" in p for p in promotion_problems(b))  # better format, worse grounding: refused
    with pytest.raises(AdapterError, match="not promoted"):
        promote(registry, [], w.served_name, drain_s=0)
    assert registry.activate(v1.served_name) is None
    previous = registry.activate(w.served_name)
    assert previous is not None and previous.served_name == v1.served_name
    assert [a.served_name for a in registry.list(status="active")] == [w.served_name]
    assert registry.require(v1.served_name).status == "retired"


def test_router_uses_the_team_adapter_falls_back_and_refuses_other_teams(registry, adapters, smollm2_dir):
    router = AdapterRouter(registry, ttl_s=0)
    support = register(registry, adapters["v1"], "support", smollm2_dir)
    sales = register(registry, adapters["sales"], "sales", smollm2_dir)
    choice = router.choose(ALICE, None, "base")
    assert choice.model == "base" and "no active adapter" in choice.note
    registry.activate(support.served_name)
    assert router.choose(ALICE, None, "base").model == support.served_name
    assert router.choose(ALICE, "base", "base").model == "base"  # the base model may always be asked for
    assert router.choose(BOB, None, "base").model == "base"
    with pytest.raises(ForbiddenError, match="belongs to team 'support'"):
        router.choose(BOB, support.served_name, "base")
    assert not router.may_use(BOB, support.served_name) and router.may_use(ALICE, support.served_name)
    registry.activate(sales.served_name)
    assert router.choose(BOB, None, "base").model == sales.served_name


def test_in_process_promotion_reconcile_and_answers(db, embedder, chunker, registry, adapters, smollm2_dir,
                                                    tmp_path):
    """The embedded backend is an AdapterHost: promote/reconcile work on it exactly as on a vLLM replica."""
    backend = EmbeddedBackend(EmbeddedBackend.Config(), home=smollm2_dir.parent.parent,
                              generation=GenerationSettings(max_tokens=8))
    try:
        PrincipalStore(db).put(ALICE)
        SyncRunner(db, embedder, chunker).run("wiki", "list", ListConnector([doc(
            "returns", "# Returns\n\nCustomers may return a robot within 30 days of delivery for a full refund.",
            access=Access(groups=("staff",)))]))
        router = AdapterRouter(registry, ttl_s=0)
        assistant = Assistant(Retriever(db, embedder), backend, AuditLog(db, b"k" * 32),
                              answer=AnswerSettings(min_score=0.0), generation=GenerationSettings(max_tokens=8),
                              router=router)
        base_answer = assistant.ask("How long do customers have to return a robot?", ALICE)
        assert base_answer.model == backend.base_model and "no active adapter" in base_answer.model_note

        v1 = register(registry, adapters["v1"], "support", smollm2_dir)
        v2 = register(registry, adapters["v2"], "support", smollm2_dir)
        done = promote(registry, [backend], v1.served_name, drain_s=0, force=True, base_model_dir=smollm2_dir,
                       max_rank=MAX_RANK)
        assert done.previous is None and set(backend.adapters()) == {v1.served_name}
        first = assistant.ask("How long do customers have to return a robot?", ALICE)
        assert first.model == v1.served_name and first.model_note is None

        done = promote(registry, [backend], v2.served_name, drain_s=0, force=True)
        assert done.previous.served_name == v1.served_name
        assert set(backend.adapters()) == {v2.served_name}  # the old version unloaded after the drain
        second = assistant.ask("How long do customers have to return a robot?", ALICE)
        assert second.model == v2.served_name

        backend.unload_adapter(v2.served_name)  # as if the server had restarted
        backend.load_adapter("stray", adapters["sales"])  # an adapter the registry does not know
        (report,) = reconcile(registry, [backend], base_model_dir=smollm2_dir, max_rank=MAX_RANK)
        assert (report.loaded, report.unloaded, report.errors) == ([v2.served_name], ["stray"], [])
        assert set(backend.adapters()) == {v2.served_name}
        shown = [r.payload["model"] for r in AuditLog(db, b"k" * 32).records(kind="ask")]
        assert shown == [backend.base_model, v1.served_name, v2.served_name]  # the audit names the version
    finally:
        backend.close()


def test_an_evaluated_adapter_is_gated_by_the_evaluations_own_rule(registry, adapters, smollm2_dir, tmp_path):
    """citeline_eval.json, when present, decides: here grounding was never measured, so it is refused."""
    from citeline.lora.evaluation import EvalReport, ModelScores

    folder = shutil.copytree(adapters["v2"], tmp_path / "evaluated")
    scores = {k: ModelScores(k, c, {}, 0.3, ()) for k, c in (("adapter", 0.9), ("base", 0.1), ("baseline", 0.2))}
    EvalReport(str(folder), "support", 10, ("bullets",), scores, None, 1.0).write(folder)
    adapter = register(registry, folder, "support", smollm2_dir)
    assert adapter.metrics["format_compliance"] == 0.9 and adapter.metrics["baseline_format_compliance"] == 0.2
    problems = promotion_problems(adapter)
    assert any("grounding was not measured" in p for p in problems)
    with pytest.raises(AdapterError, match="grounding was not measured"):
        promote(registry, [], adapter.served_name, drain_s=0)


def test_replacing_the_active_adapter_needs_an_evaluation_against_it_that_beats_it(registry, adapters, smollm2_dir,
                                                                                   tmp_path):
    """An evaluation report decides; it must name the team's active adapter, and the new one must beat it."""
    from citeline.lora.evaluation import EvalReport, Grounding, ModelScores

    def evaluated(name: str, source: str, current: str | None, adapter=(0.9, 0.5), previous=(0.8, 0.4)) -> Path:
        folder = shutil.copytree(adapters[source], tmp_path / name)
        scores = {k: ModelScores(k, c, {}, s, ()) for k, (c, s) in
                  (("adapter", adapter), ("base", (0.1, 0.1)), ("baseline", (0.2, 0.1)))}
        if current is not None:
            scores["current"] = ModelScores("current", *previous[:1], {}, previous[1], ())
        grounding = Grounding(4, 4, 1, 4, 4, *((4, 4) if current else (None, None)))
        EvalReport(str(folder), "support", 10, ("bullets",), scores, grounding, 1.0, current=current).write(folder)
        return folder

    first = register(registry, evaluated("first", "v1", None), "support", smollm2_dir)
    assert promotion_problems(first, registry.active("support")) == []  # the team has none yet
    promote(registry, [], first.served_name, drain_s=0)

    blind = register(registry, evaluated("blind", "v2", None), "support", smollm2_dir)  # never compared with first
    (problem,) = promotion_problems(blind, registry.active("support"))
    assert f"evaluated without the team's active adapter, not against {first.served_name}" in problem
    with pytest.raises(AdapterError, match=f"not against {first.served_name}"):
        promote(registry, [], blind.served_name, drain_s=0)

    # re-evaluated against the active one (`citeline adapter eval <served name>` writes into the stored copy)
    (evaluated("worse", "v2", first.served_name, adapter=(0.7, 0.5)) / "citeline_eval.json").replace(
        blind.path / "citeline_eval.json")
    with pytest.raises(AdapterError, match=f"does not beat the team's current adapter {first.served_name}"):
        promote(registry, [], blind.served_name, drain_s=0)
    assert registry.active("support").served_name == first.served_name  # nothing changed

    metrics_only = register(registry, with_metrics(shutil.copytree(adapters["sales"], tmp_path / "m"), smollm2_dir,
                                                   format_compliance=0.9, baseline_format_compliance=0.2),
                            "support", smollm2_dir)
    assert any(f"no evaluation against {first.served_name}" in p
               for p in promotion_problems(metrics_only, registry.active("support")))

    better = evaluated("better", "v2", first.served_name)
    (better / "citeline_eval.json").replace(blind.path / "citeline_eval.json")  # `adapter eval <served name>`
    assert promotion_problems(registry.require(blind.served_name), registry.active("support")) == []
    promote(registry, [], blind.served_name, drain_s=0)
    assert registry.active("support").served_name == blind.served_name
