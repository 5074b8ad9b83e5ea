"""A contract test suite every answer verifier runs (built-in or third-party).

Inherit :class:`VerifierContract` in a pytest test class and provide a ``verifier`` fixture (built as
``cls(config, embedder=...)``)::

    from citeline.testing.verifiers import VerifierContract

    class TestMyVerifier(VerifierContract):
        @pytest.fixture
        def verifier(self):
            return MyVerifier(MyVerifier.Config(), embedder=None)

Evidence is built by :meth:`VerifierContract.make_evidence` (a
:class:`citeline.contracts.generator.Evidence`); override it if your verifier needs another kind. It
checks the promises of :mod:`citeline.contracts.verifier`. Nothing here imports pytest.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from citeline.contracts.generator import Evidence
from citeline.contracts.verifier import Claim, Judgement, Verifier

__all__ = ["VerifierContract", "contract_checks", "sample_claims"]

QUESTION = "how do I roll back a bad deploy"
_DEPLOY = ("Run `acme-deploy rollback fleet` to redeploy the previous release in under two minutes. "
           "Deploys happen Monday to Thursday.")
_RETURNS = "Opened items can be returned within 30 days for a refund."


def sample_claims(make_evidence: Any) -> tuple[list[Claim], list[bool]]:
    """Claims with the judgement every verifier must give (supported or not)."""
    e1, e2 = make_evidence(1, _DEPLOY), make_evidence(2, _RETURNS)
    shown = (e1, e2)
    return [
        Claim("Run acme-deploy rollback fleet to redeploy the previous release.", (e1,), shown, QUESTION),
        Claim("Run acme-deploy rollback fleet to redeploy the previous release.", (e2,), shown, QUESTION),
        Claim("Opened items can be returned within 30 days.", (e2,), shown, "return policy"),
        Claim("The moon is made of cheese and orbits Jupiter weekly.", (e1,), shown, QUESTION),
    ], [True, False, True, False]


class VerifierContract:
    """Checks the promises of :mod:`citeline.contracts.verifier`. Needs a ``verifier`` fixture."""

    def make_evidence(self, n: int, text: str) -> Any:
        return Evidence(n=n, chunk_id=100 + n, document_id=10 + n, title=f"Doc {n}", url=None, text=text, score=0.5)

    def test_is_a_verifier(self, verifier: Any) -> None:
        assert isinstance(verifier, Verifier), "the class implements citeline.contracts.verifier.Verifier"
        assert isinstance(verifier.name, str) and verifier.name, "name is a non-empty string"

    def test_one_judgement_per_claim(self, verifier: Any) -> None:
        claims, _ = sample_claims(self.make_evidence)
        out = verifier.judge(claims)
        assert isinstance(out, list) and len(out) == len(claims), "judge() returns one Judgement per claim"
        assert all(isinstance(j, Judgement) for j in out), "judge() returns Judgement objects"
        assert all(isinstance(j.supported, bool) and isinstance(j.score, float) for j in out), \
            "supported is a bool, score a float"

    def test_judgements(self, verifier: Any) -> None:
        claims, expected = sample_claims(self.make_evidence)
        for claim, judgement, supported in zip(claims, verifier.judge(claims), expected, strict=True):
            assert judgement.supported is supported, f"{claim.sentence!r} citing {[e.n for e in claim.cited]}: " \
                                                     f"supported should be {supported}"
            if not supported:
                assert judgement.reason.strip(), "an unsupported claim has a reason a person can read"

    def test_no_claims(self, verifier: Any) -> None:
        assert verifier.judge([]) == [], "no claims, no judgements"

    def test_deterministic_and_independent_of_the_batch(self, verifier: Any) -> None:
        claims, _ = sample_claims(self.make_evidence)
        batch = verifier.judge(claims)
        assert batch == verifier.judge(claims), "the same claims, the same judgements"
        alone = [verifier.judge([c])[0] for c in claims]
        assert [j.supported for j in alone] == [j.supported for j in batch], \
            "a claim's judgement does not depend on the other claims in the batch"
        assert verifier.judge(list(reversed(claims))) == list(reversed(batch)), "judgements follow the claims' order"


def contract_checks(verifier: Verifier, make_evidence: Callable[[int, str], Any] | None = None) -> None:
    """Every check of :class:`VerifierContract` on one verifier, from a plain test function.

    ``make_evidence(n, text)`` builds one piece of evidence (default: :meth:`VerifierContract.make_evidence`).
    Raises AssertionError naming the failed check.
    """
    suite = VerifierContract()
    if make_evidence is not None:
        suite.make_evidence = make_evidence  # type: ignore[assignment]  # an instance override
    for name in sorted(n for n in dir(VerifierContract) if n.startswith("test_")):
        getattr(suite, name)(verifier)
