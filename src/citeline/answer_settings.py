"""The ``[answer]`` section of the settings (and its ``[answer.cache]``), and the base of every section.

Kept beside :mod:`citeline.settings` (which imports it; ``citeline.settings.AnswerSettings`` stays the name
to use) so that module stays within its size.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["AnswerCacheSettings", "AnswerSettings", "Section"]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AnswerCacheSettings(Section):
    """The answer cache (:mod:`citeline.answers.cache`): generated and verified answers kept in process, keyed
    by everything that decides them (the evidence shown, the prompt, model, adapter and settings), never by
    who asked. Retrieval always runs as the asker; only generation is skipped on a hit.

    On by default: two askers share an entry only when they were shown exactly the same evidence, an edited
    or deleted document changes the key, and only greedy answers (temperature 0, the default) are cached, so
    a hit delivers what the model would have generated again.
    """

    enabled: bool = Field(True, description="cache generated answers (greedy ones: temperature 0)")
    max_entries: int = Field(1024, ge=1, le=1_000_000, description="answers kept at most (least recently used "
                             "go first)")
    max_bytes: int = Field(16 << 20, ge=1024, description="approximate memory of the kept answers at most")
    ttl_s: float = Field(3600.0, gt=0, description="an entry older than this is not used")


class AnswerSettings(Section):
    """Grounded answers: when to refuse, how much evidence to show."""

    min_score: float = Field(0.45, ge=-1.0, le=1.0, description="refuse without calling the model when the best "
                             "visible chunk's cosine similarity to the question is below this (calibrated on the "
                             "example corpus: see docs/benchmarks.md)")
    evidence_k: int = Field(6, ge=1, le=50, description="retrieved chunks offered to the prompt builder")
    refusal_sources: int = Field(3, ge=0, le=20, description="closest sources listed with a refusal")
    verify: Literal["fallback", "drop", "flag", "off"] = Field(
        "fallback", description="check every sentence against the evidence it cites (citeline.answers.verification): "
        "fallback = drop unsupported sentences and answer extractively from the same evidence when fewer than "
        "min_supported survive; drop = drop them; flag = keep them marked [unverified]; off = no check")
    verifier: str = Field("lexical", description="entry point in group citeline.verifiers")
    verifier_options: dict[str, Any] = Field(default_factory=dict, description="the verifier's own typed options "
                                             "(its Config model), e.g. {min_coverage = 0.8}")
    min_supported: float = Field(0.5, ge=0.0, le=1.0, description="fallback: the share of the model's stating "
                                 "sentences that must be supported to keep its answer")
    answerable_coverage: float = Field(0.35, ge=0.0, le=1.0, description="the extractive answer (and so the "
                                       "fallback) refuses unless its sentences cover this share of the question's "
                                       "content words, weighted by rarity ...")
    answerable_similarity: float = Field(0.7, ge=-1.0, le=2.0, description="... or its best sentence is this "
                                         "similar to the question (embedding cosine)")
    early_fallback: int = Field(2, ge=0, le=100, description="fallback: stop generating once this many sentences "
                                "are unsupported and none is supported (the answer will be the extractive one "
                                "anyway); base-model answers only; 0 = always generate the whole answer")
    repair_citations: bool = Field(True, description="a stating sentence without [n] gets the citation of the one "
                                   "piece of evidence that supports it (else it is unsupported)")
    rewrite: Literal["auto", "model", "rules"] = Field(
        "auto", description="follow-up questions in a conversation become standalone questions for retrieval: "
        "model = ask the generation model (checked; rules if its rewrite is unusable), rules = deterministic, "
        "auto = model for the openai backend, rules otherwise")
    history_tokens: int = Field(400, ge=0, le=8192, description="earlier turns of a conversation kept in the prompt "
                                "(the most recent that fit)")
    cache: AnswerCacheSettings = Field(default_factory=AnswerCacheSettings, description="the answer cache")
