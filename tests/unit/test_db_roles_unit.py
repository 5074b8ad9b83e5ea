"""The runtime login's name check and the SCRAM-SHA-256 verifier (the real server checks both in
tests/integration/test_db_roles.py)."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest

from citeline.db.roles import scram_verifier, validate_login_name
from citeline.errors import DatabaseError

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("name", ["citeline_app", "app", "_svc", "a1_b2", "x" * 63])
def test_plain_identifiers_are_accepted(name):
    assert validate_login_name(name) == name


@pytest.mark.parametrize("name", ["", "1app", "App", "x; DROP TABLE t", '"quoted"', "a b", "x'--", "pg_app",
                                  "postgres", "public", "citeline_reader", "citeline_writer", "citeline_auditor",
                                  "citeline_lexicon", "current_user", "x" * 64, "app$", "appé"])
def test_other_names_are_refused_with_the_rule(name):
    with pytest.raises(DatabaseError, match="not a usable runtime login name.*lowercase letters"):
        validate_login_name(name)


def test_the_verifier_has_postgres_format_and_matches_the_password():
    salt = bytes(range(16))
    verifier = scram_verifier("pencil", salt=salt, iterations=4096)
    method, rest = verifier.split("$", 1)
    params, keys = rest.split("$")
    iterations, salt_b64 = params.split(":")
    stored_b64, server_b64 = keys.split(":")
    assert method == "SCRAM-SHA-256" and iterations == "4096" and base64.b64decode(salt_b64) == salt
    salted = hashlib.pbkdf2_hmac("sha256", b"pencil", salt, 4096)
    client_key = hmac.digest(salted, b"Client Key", "sha256")
    assert base64.b64decode(stored_b64) == hashlib.sha256(client_key).digest()
    assert base64.b64decode(server_b64) == hmac.digest(salted, b"Server Key", "sha256")
    assert "pencil" not in verifier
    assert scram_verifier("pencil") != scram_verifier("pencil")  # a fresh random salt each time
