"""retrieval.fusion and its weights: typed, bounded, from TOML and the environment."""

from __future__ import annotations

import pytest

from citeline.domain import SearchMode
from citeline.errors import ConfigError
from citeline.retrieval.search import _statement
from citeline.settings import Fusion, RetrievalSettings, Settings

pytestmark = pytest.mark.unit


def test_convex_fusion_is_the_default_and_rrf_an_option(tmp_path, monkeypatch):
    assert RetrievalSettings().fusion is Fusion.CONVEX
    toml = tmp_path / "citeline.toml"
    toml.write_text('[retrieval]\nfusion = "rrf"\nfusion_weight = 0.25\n')
    s = Settings.load(toml)
    assert (s.retrieval.fusion, s.retrieval.fusion_weight) == (Fusion.RRF, 0.25)
    monkeypatch.setenv("CITELINE_RETRIEVAL__FUSION", "convex")
    monkeypatch.setenv("CITELINE_RETRIEVAL__FUSION_SECOND_CHUNK", "0.1")
    s = Settings.load(toml)
    assert (s.retrieval.fusion, s.retrieval.fusion_second_chunk) == (Fusion.CONVEX, 0.1)


@pytest.mark.parametrize(("key", "value"), [("fusion", '"sum"'), ("fusion_weight", "1.5"),
                                            ("fusion_weight", "-0.1"), ("fusion_second_chunk", "2")])
def test_bad_values_name_the_key(tmp_path, key, value):
    toml = tmp_path / "citeline.toml"
    toml.write_text(f"[retrieval]\n{key} = {value}\n")
    with pytest.raises(ConfigError, match=f"retrieval.{key}"):
        Settings.load(toml)


def test_each_fusion_plans_its_own_statement():
    convex = _statement(SearchMode.HYBRID, "visible", Fusion.CONVEX)
    rrf = _statement(SearchMode.HYBRID, "visible", Fusion.RRF)
    assert "pool AS MATERIALIZED" in convex and "pool AS" not in rrf
    assert "%(rrf_k)s + d.r" in rrf
    # the question is only ever a bound parameter, and the dense and lexical modes are untouched
    for statistics in ("visible", "global"):  # every placeholder filled, whichever statistics
        text = _statement(SearchMode.HYBRID, statistics, Fusion.CONVEX)
        assert "%(text)s" in text and "{" not in text.replace("'{a}'", "")
    assert _statement(SearchMode.DENSE, "visible", Fusion.CONVEX) == _statement(SearchMode.DENSE, "visible", Fusion.RRF)
