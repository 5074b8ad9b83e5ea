"""SCIM PATCH and filters as Okta and Entra ID send them (citeline.identity.scim_patch), and what is refused."""

from __future__ import annotations

import pytest

from citeline.errors import ScimError
from citeline.identity.scim_patch import parse_eq_filter, patch

pytestmark = pytest.mark.unit

USER = {"userName": "alice@example.com", "active": True, "name": {"givenName": "Alice"},
        "emails": [{"type": "work", "value": "alice@example.com", "primary": True}]}
GROUP = {"displayName": "eng", "members": [{"value": "u1"}, {"value": "u2"}]}


def test_okta_deactivates_with_a_pathless_replace():
    out = patch(USER, [{"op": "replace", "value": {"active": False}}])
    assert out["active"] is False and USER["active"] is True  # a copy: the given resource is left as it was


def test_entra_sends_capitalised_ops_and_string_booleans():
    out = patch(USER, [{"op": "Replace", "path": "active", "value": "False"}])
    assert out["active"] is False
    out = patch(USER, [{"op": "Add", "path": "name.familyName", "value": "Smith"},
                       {"op": "Replace", "path": 'emails[type eq "work"].value', "value": "a@new.example"},
                       {"op": "Replace", "path": "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:"
                                                "department", "value": "Support"}])
    assert out["name"] == {"givenName": "Alice", "familyName": "Smith"}
    assert out["emails"][0]["value"] == "a@new.example" and len(out["emails"]) == 1
    assert out["urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"]["department"] == "Support"


def test_core_urn_prefixed_paths_are_plain_attributes():
    out = patch(USER, [{"op": "replace", "path": "urn:ietf:params:scim:schemas:core:2.0:User:userName",
                        "value": "alice2@example.com"}])
    assert out["userName"] == "alice2@example.com"


def test_group_members_add_remove_replace():
    assert [m["value"] for m in patch(GROUP, [{"op": "add", "path": "members",
                                               "value": [{"value": "u3"}, {"value": "u1"}]}])["members"]] \
        == ["u1", "u2", "u3"]
    # Okta removes one member with a filtered path; Entra with a value list
    assert [m["value"] for m in patch(GROUP, [{"op": "remove", "path": 'members[value eq "u1"]'}])["members"]] \
        == ["u2"]
    assert patch(GROUP, [{"op": "Remove", "path": "members", "value": [{"value": "u2"}]}])["members"] \
        == [{"value": "u1"}]
    assert patch(GROUP, [{"op": "remove", "path": "members"}])["members"] == []
    assert patch(GROUP, [{"op": "replace", "path": "members", "value": [{"value": "u9"}]}])["members"] \
        == [{"value": "u9"}]
    out = patch(GROUP, [{"op": "replace", "value": {"displayName": "eng2", "members": [{"value": "u2"}]}}])
    assert out == {"displayName": "eng2", "members": [{"value": "u2"}]}


@pytest.mark.parametrize("ops", [
    [], "replace", [{"op": "move", "path": "active", "value": True}], [{"op": "remove"}],
    [{"op": "replace", "value": "not an object"}], [{"op": "replace", "path": "a b c", "value": 1}],
    [{"op": "add", "path": "members", "value": ["u1"]}], [{"op": "add", "path": "members", "value": [{"value": 3}]}],
    [{"op": "remove", "path": 'members[display eq "x"]'}], [{"op": "replace", "path": 7, "value": 1}], ["op"],
])
def test_malformed_operations_are_refused_and_nothing_is_applied(ops):
    with pytest.raises(ScimError) as caught:
        patch({**GROUP, "active": True}, ops)
    assert caught.value.status == 400 and caught.value.scim_type


def test_eq_filters_only():
    assert parse_eq_filter('userName eq "bjensen@example.com"', ("userName", "externalId")) \
        == ("userName", "bjensen@example.com")
    assert parse_eq_filter('USERNAME Eq "a\\"b"', ("userName",)) == ("userName", 'a"b')
    for bad in ('userName co "a"', 'userName eq "a" or userName eq "b"', "userName eq a", 'emails eq "x"',
                'userName eq "a"; DROP TABLE scim_users'):
        with pytest.raises(ScimError) as caught:
            parse_eq_filter(bad, ("userName", "externalId"))
        assert caught.value.scim_type == "invalidFilter"
