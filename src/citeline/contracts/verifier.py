"""The verifier contract: does the evidence a sentence cites support it?

A verifier is a class registered under the entry-point group ``citeline.verifiers`` (the built-in
``lexical`` is registered in citeline's own ``pyproject.toml`` the same way). It is built by
:func:`citeline.plugins.create` as ``cls(config, embedder=embedder)``: ``config`` is the class's own
pydantic ``Config`` validated from ``[answer.verifier_options]``, ``embedder`` the index's
:class:`citeline.contracts.embedder.Embedder` (a verifier may ignore it).

A verifier judges claims in batches: ``judge(claims)``. A :class:`Claim` is one sentence of an answer
(citation markers removed), the evidence it cites, every piece of evidence shown, and the question; each
piece of evidence is :class:`EvidenceLike` (``n``, ``text``, ``title``, ``chunk_id``). A verifier must
guarantee:

- one :class:`Judgement` per claim, in the claims' order (``judge([])`` is ``[]``);
- a sentence taken from the evidence it cites is supported; a sentence its cited evidence does not
  support (wrong citation, unrelated statement) is not, and then ``reason`` says why in words a person
  can read;
- judgements are deterministic and independent of the other claims in the batch.

The rules applied around any verifier (uncited sentences, numbers and names absent from the evidence,
repeated sentences, planted instructions) and the policies are in :mod:`citeline.answers.verification`.
``citeline.testing.verifiers.VerifierContract`` checks these; built-ins and plugins run it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

__all__ = ["Claim", "EvidenceLike", "Judgement", "Verifier"]


class EvidenceLike(Protocol):
    n: int
    text: str
    title: str
    chunk_id: int


@dataclass(frozen=True)
class Claim:
    sentence: str  # without citation markers
    cited: tuple[Any, ...]  # the evidence (``Evidence``) the sentence cites
    evidence: tuple[Any, ...]  # all evidence shown
    question: str


@dataclass(frozen=True)
class Judgement:
    supported: bool
    score: float
    reason: str = ""


@runtime_checkable
class Verifier(Protocol):
    """What the answer verification consumes. See the module docstring for the full contract."""

    name: str

    def judge(self, claims: Sequence[Claim]) -> list[Judgement]: ...
