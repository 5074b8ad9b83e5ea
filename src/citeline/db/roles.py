"""Least-privilege logins: the runtime login servers and workers use, and the embedded server's ``citeline_app``.

The schema belongs to the admin login, which runs the migrations (``citeline db migrate``). Servers, the
scheduler and the CLI's everyday commands log in as a login that holds only ``citeline_reader`` and
``citeline_writer`` (the roles every transaction switches to, see :class:`citeline.db.Database`): it owns
nothing, may not create, alter or drop tables, create roles or read the audit log except as the writer does.

``citeline_auditor`` is not granted: ``citeline audit verify`` and ``export`` read the log as
``citeline_writer`` (which keeps SELECT on it, migration 0006), so the runtime login needs nothing more;
``citeline_auditor`` is for a separate, read-only audit login an operator may grant it to.

Passwords reach the server only as a SCRAM-SHA-256 verifier computed here (as ``psql``'s ``\\password``
does): the plain password is in no statement, so no server log (``log_statement = 'ddl'``) can show it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import unicodedata
from dataclasses import dataclass

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from citeline.db.migrations import ROLES, ensure_roles
from citeline.errors import DatabaseError

__all__ = ["EMBEDDED_LOGIN", "RUNTIME_ROLES", "LoginInfo", "RuntimeLogin", "embedded_login_url",
           "ensure_runtime_login", "login_info", "scram_verifier", "validate_login_name"]

EMBEDDED_LOGIN = "citeline_app"
RUNTIME_ROLES = ("citeline_reader", "citeline_writer")
_LOGIN_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")  # an unquoted, lowercase Postgres identifier
_RESERVED = frozenset({*ROLES, "citeline_lexicon", "public", "postgres", "none", "current_user", "session_user",
                       "current_role", "user"})
_ROLES_LOCK = 0x63697466  # serialises concurrent creation of the same login (cf. the migrations' lock)
_SCRAM_ITERATIONS = 4096  # PostgreSQL's default (scram_iterations)

# values bound, identifiers composed with psycopg.sql; a password only as a verifier literal
_ROLE = ("SELECT rolsuper, rolcreaterole, rolcreatedb, rolbypassrls, rolcanlogin FROM pg_roles"
         " WHERE rolname = %s")
_OWNS_SCHEMA = ("SELECT 1 FROM pg_namespace"
                " WHERE nspname = %s AND nspowner = (SELECT oid FROM pg_roles WHERE rolname = %s)")
_IS_MEMBER = "SELECT pg_has_role(%s, %s, 'USAGE') AS member"
_LOCK = "SELECT pg_advisory_xact_lock(%s)"
_CREATE_LOGIN = sql.SQL("CREATE ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOBYPASSRLS NOREPLICATION")
_WITH_PASSWORD = sql.SQL(" PASSWORD {}")
_SET_PASSWORD = sql.SQL("ALTER ROLE {} PASSWORD {}")
_GRANT = sql.SQL("GRANT {} TO {}")
_LOGIN_INFO = """
SELECT current_user AS login, r.rolsuper AS superuser,
       r.rolsuper OR CASE WHEN n.oid IS NULL THEN has_database_privilege(current_database(), 'CREATE')
                          ELSE pg_has_role(current_user, n.nspowner, 'USAGE') END AS may_migrate
FROM pg_roles r LEFT JOIN pg_namespace n ON n.nspname = %s
WHERE r.rolname = current_user"""


@dataclass(frozen=True)
class LoginInfo:
    """The login a connection runs as, and whether it may migrate a namespace (owns it, or may create it)."""

    login: str
    superuser: bool
    may_migrate: bool


@dataclass(frozen=True)
class RuntimeLogin:
    """What :func:`ensure_runtime_login` did (never the password)."""

    name: str
    created: bool
    password_set: bool
    granted: tuple[str, ...]  # roles granted now (empty when it held them already)
    roles: tuple[str, ...] = RUNTIME_ROLES


def validate_login_name(name: str) -> str:
    """``name`` if it is a plain lowercase role identifier that is not one of citeline's or PostgreSQL's own."""
    if not _LOGIN_NAME.match(name) or name.startswith("pg_") or name in _RESERVED:
        raise DatabaseError(
            f"{name!r} is not a usable runtime login name: use lowercase letters, digits and _ (at most 63, not "
            f"starting with a digit or pg_), and not one of {', '.join(sorted(_RESERVED))}; e.g. citeline_app")
    return name


def scram_verifier(password: str, *, salt: bytes | None = None, iterations: int = _SCRAM_ITERATIONS) -> str:
    """The SCRAM-SHA-256 verifier PostgreSQL stores for ``password`` (RFC 5802/7677; NFKC in place of SASLprep)."""
    salt = salt or secrets.token_bytes(16)
    salted = hashlib.pbkdf2_hmac("sha256", unicodedata.normalize("NFKC", password).encode("utf-8"), salt, iterations)
    stored = hashlib.sha256(hmac.digest(salted, b"Client Key", "sha256")).digest()
    server = hmac.digest(salted, b"Server Key", "sha256")
    b64 = lambda b: base64.b64encode(b).decode("ascii")  # noqa: E731
    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored)}:{b64(server)}"


def login_info(conn: psycopg.Connection, namespace: str) -> LoginInfo:
    row = conn.cursor(row_factory=dict_row).execute(_LOGIN_INFO, (namespace,)).fetchone()
    assert row is not None  # current_user always has a pg_roles row
    return LoginInfo(row["login"], bool(row["superuser"]), bool(row["may_migrate"]))


def _refuse(conn: psycopg.Connection, name: str, namespace: str) -> dict | None:
    """The existing role ``name`` (None: missing); an error where it may not be a least-privilege login."""
    if name in (conn.info.user, login_info(conn, namespace).login):
        raise DatabaseError(f"the runtime login must not be the admin login this runs as ({name!r}); "
                            "name another login, e.g. --runtime-login citeline_app")
    row = conn.cursor(row_factory=dict_row).execute(_ROLE, (name,)).fetchone()
    if row is None:
        return None
    if row["rolsuper"]:
        raise DatabaseError(f"role {name!r} is a superuser: a runtime login must not be; name another login")
    extra = [attr for attr, key in (("CREATEROLE", "rolcreaterole"), ("CREATEDB", "rolcreatedb"),
                                    ("BYPASSRLS", "rolbypassrls")) if row[key]]
    if extra:
        raise DatabaseError(f"role {name!r} has {', '.join(extra)}: a runtime login must not; "
                            f"ALTER ROLE {name} NO{' NO'.join(extra)}, or name another login")
    if not row["rolcanlogin"]:
        raise DatabaseError(f"role {name!r} exists but cannot log in (a group role?); name another login")
    if conn.execute(_OWNS_SCHEMA, (namespace, name)).fetchone():
        raise DatabaseError(f"role {name!r} owns namespace {namespace!r}: a runtime login must own nothing; "
                            "name another login")
    return row


def _grant_runtime_roles(conn: psycopg.Connection, name: str) -> tuple[str, ...]:
    granted = []
    for role in RUNTIME_ROLES:
        member = conn.cursor(row_factory=dict_row).execute(_IS_MEMBER, (name, role)).fetchone()
        if not member or not member["member"]:
            conn.execute(_GRANT.format(sql.Identifier(role), sql.Identifier(name)))
            granted.append(role)
    return tuple(granted)


def ensure_runtime_login(conn: psycopg.Connection, name: str, password: str | None,
                         namespace: str) -> RuntimeLogin:
    """Create login ``name`` if missing (``password`` required then), set its password where one is given, and
    grant it :data:`RUNTIME_ROLES`. Run as the admin login, after the migrations (the roles exist then).

    Refused: a name that is not a plain identifier, the admin login itself, a superuser, a role with
    CREATEROLE/CREATEDB/BYPASSRLS, one that cannot log in or owns the namespace.
    """
    validate_login_name(name)
    if password is not None and not password:
        raise DatabaseError("CITELINE_RUNTIME_DB_PASSWORD is empty; set a password or unset it")
    try:
        return _ensure_login(conn, name, password, namespace)
    except psycopg.errors.InsufficientPrivilege as exc:
        raise DatabaseError(
            f"login {conn.info.user!r} may not create or change login {name!r} ({exc.diag.message_primary}): run "
            "this as the admin login, which needs CREATEROLE and ADMIN OPTION on citeline_reader and "
            "citeline_writer (it has both where it created them)") from exc


def _ensure_login(conn: psycopg.Connection, name: str, password: str | None, namespace: str) -> RuntimeLogin:
    ident = sql.Identifier(name)
    with conn.transaction():
        conn.execute(_LOCK, (_ROLES_LOCK,))
        existing = _refuse(conn, name, namespace)
        if existing is None:
            if password is None:
                raise DatabaseError(f"login {name!r} does not exist and CITELINE_RUNTIME_DB_PASSWORD is not set: "
                                    "set it to the password the servers will use, and run `citeline db migrate` again")
            conn.execute(_CREATE_LOGIN.format(ident) + _WITH_PASSWORD.format(sql.Literal(scram_verifier(password))))
        elif password is not None:
            conn.execute(_SET_PASSWORD.format(ident, sql.Literal(scram_verifier(password))))
        granted = _grant_runtime_roles(conn, name)
    return RuntimeLogin(name, created=existing is None, password_set=password is not None, granted=granted)


def embedded_login_url(admin_url: str, name: str = EMBEDDED_LOGIN) -> str:
    """The URL of the embedded server's application login ``name``, created (without a password: the embedded
    server listens only on its Unix socket, where its ``pg_hba.conf`` trusts local logins) where missing.

    Reads only when the login and its roles are in place."""
    with psycopg.connect(admin_url, autocommit=True) as conn:
        row = conn.cursor(row_factory=dict_row).execute(_ROLE, (name,)).fetchone()
        if row is None or not _has_roles(conn, name):
            with conn.transaction():
                conn.execute(_LOCK, (_ROLES_LOCK,))
                ensure_roles(conn)
                row = conn.cursor(row_factory=dict_row).execute(_ROLE, (name,)).fetchone()
                if row is None:
                    conn.execute(_CREATE_LOGIN.format(sql.Identifier(name)))
                _grant_runtime_roles(conn, name)
        elif row["rolsuper"]:
            raise DatabaseError(f"the embedded application login {name!r} is a superuser; "
                                f"ALTER ROLE {name} NOSUPERUSER")
    info = {k: str(v) for k, v in psycopg.conninfo.conninfo_to_dict(admin_url).items() if v is not None}
    info.pop("password", None)
    info["user"] = name
    return psycopg.conninfo.make_conninfo("", **info)


def _has_roles(conn: psycopg.Connection, name: str) -> bool:
    found = conn.execute("SELECT count(*) FROM pg_roles WHERE rolname = ANY(%s)", (list(RUNTIME_ROLES),)).fetchone()
    if not found or found[0] != len(RUNTIME_ROLES):
        return False
    return all(conn.cursor(row_factory=dict_row).execute(_IS_MEMBER, (name, role)).fetchone()["member"]  # type: ignore[index]
               for role in RUNTIME_ROLES)
