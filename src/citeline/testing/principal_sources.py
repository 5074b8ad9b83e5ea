"""A contract test suite every principal source runs (built-in or third-party).

Inherit :class:`PrincipalSourceContract` in a pytest test class and provide two fixtures: ``source``, a working
source built as ``cls(config, source=name, db=...)`` over a directory that lists ``expected`` (a fixture too: the
:class:`citeline.contracts.principal_source.Listing` it must return), and ``broken_source``, the same class
pointed at a directory it cannot read (a server that is down, bad credentials)::

    from citeline.testing.principal_sources import PrincipalSourceContract

    class TestMySource(PrincipalSourceContract):
        @pytest.fixture
        def source(self): ...
        @pytest.fixture
        def broken_source(self): ...
        @pytest.fixture
        def expected(self): ...

It checks the promises of :mod:`citeline.contracts.principal_source`. Nothing here imports pytest.
"""

from __future__ import annotations

from typing import Any

from citeline.contracts.principal_source import Listing, PrincipalSource
from citeline.domain import Principal
from citeline.errors import PrincipalError

__all__ = ["PrincipalSourceContract"]


class PrincipalSourceContract:
    """Checks the promises of :mod:`citeline.contracts.principal_source`. Needs ``source``, ``broken_source`` and
    ``expected`` fixtures."""

    def test_is_a_principal_source(self, source: Any) -> None:
        assert isinstance(source, PrincipalSource), "the class implements PrincipalSource (name, fetch)"
        assert isinstance(source.name, str) and source.name, "name is a non-empty string"
        assert isinstance(getattr(type(source), "Config", None), type), "the class carries its Config model"

    def test_fetch_returns_the_complete_listing(self, source: Any, expected: Listing) -> None:
        got = source.fetch()
        assert isinstance(got, Listing), f"fetch() returns a Listing, not {type(got).__name__}"
        assert all(isinstance(p, Principal) for p in got.principals), "a Listing of Principal values"
        users = got.users()
        assert users == sorted(users) and len(set(users)) == len(users), "sorted by user, each user once"
        assert got == expected, "every user the directory holds, with exactly its groups"

    def test_deterministic(self, source: Any) -> None:
        assert source.fetch() == source.fetch(), "the same directory gives the same listing"

    def test_a_directory_it_cannot_read_is_an_error_not_a_listing(self, broken_source: Any) -> None:
        try:
            got = broken_source.fetch()
        except PrincipalError as exc:
            assert str(exc), "the error says what failed"
            return
        raise AssertionError(f"fetch() on an unreadable directory returned {got!r}: it must raise PrincipalError "
                             "(a partial or empty listing would remove every user's access)")
