"""serving.limits.KnownKeys: the keys that authenticated lately, shared by the API edge and the MCP edge."""

from __future__ import annotations

import pytest

from citeline.serving.limits import KnownKeys

pytestmark = pytest.mark.unit


def test_known_keys_remember_digests_and_drop_the_least_recently_seen():
    known = KnownKeys(size=2)
    assert "cl_a" not in known and None not in known
    known.remember(None)  # no key (a session cookie): nothing remembered
    known.remember("cl_a")
    known.remember("cl_b")
    known.remember("cl_a")  # seen again: now the most recent
    known.remember("cl_c")  # over the size: cl_b, the least recently seen, goes
    assert "cl_a" in known and "cl_c" in known and "cl_b" not in known
    assert "cl_a" not in str(vars(known))  # only digests are kept, never a key
