from __future__ import annotations

import pytest

from citeline.domain import Access, Document, Principal

pytestmark = pytest.mark.unit


def test_access_fails_closed_and_builds_tokens():
    assert Access() == Access.private()
    assert Access().tokens == () and not Access().public
    acc = Access(users=("bob", "amy", "bob"), groups=("eng",))
    assert acc.users == ("amy", "bob")
    assert acc.tokens == ("u:amy", "u:bob", "g:eng")


def test_access_from_mapping_replaces_the_default_as_a_whole():
    default = Access(groups=("staff",))
    assert Access.from_mapping(None, default) == default
    assert Access.from_mapping(None) == Access.private()
    assert Access.from_mapping({"public": True}, default) == Access(public=True)
    assert Access.from_mapping({"users": ["carol"]}, default) == Access(users=("carol",))
    assert Access.from_mapping({}, default) == Access.private()
    assert Access.from_mapping({"groups": "hr"}, default) == Access(groups=("hr",))
    with pytest.raises(ValueError, match="unknown access keys"):
        Access.from_mapping({"group": ["hr"]})
    with pytest.raises(ValueError, match="true or false"):
        Access.from_mapping({"public": "yes"})
    with pytest.raises(ValueError, match="invalid group name"):
        Access.from_mapping({"groups": ["has space"]})


def test_principal_tokens_and_validation():
    p = Principal("alice", ("eng", "staff"))
    assert p.tokens == ("u:alice", "g:eng", "g:staff")
    with pytest.raises(ValueError):
        Principal("")
    with pytest.raises(ValueError):
        Document(external_id="", title="t", text="x")
