"""The adversarial suite (marker ``security``): hostile users, dirty files, careless admins, database logins.

Re-exports the e2e fixtures (a real ``citeline serve`` on the Acme example with keys for alice, bob, carol
and an admin) so that every test here runs against the real server and the real embedded PostgreSQL.
"""

from __future__ import annotations

from tests.e2e.conftest import Server, free_port, run_server, server, vllm_venv, wait_ready  # noqa: F401
