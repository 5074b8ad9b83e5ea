"""Every exception citeline raises on purpose, in one tree.

Per-item problems (one file that does not parse, one ticket with a bad field) are not exceptions:
connectors yield them as :class:`citeline.connectors.interfaces.Failure` values and the sync goes on.
Exceptions are for operations that fail as a whole; each message names the thing and the fix.

    CitelineError
    ├── ConfigError              bad citeline.toml / environment, unknown source or plugin
    ├── DatabaseError            cannot start or reach PostgreSQL, pgvector missing, schema mismatch
    │   └── SchemaMismatchError  the index was built with another embedding dimension
    ├── ConnectorError           a source cannot be read at all (missing folder, broken credentials)
    ├── SyncLockedError          another process is syncing the same source
    ├── PrincipalError           unknown or malformed principal
    ├── EvaluationError          malformed BEIR files
    ├── GenerationError          the model backend cannot answer (down, timeout, unknown adapter)
    ├── AuthError                missing, unknown or revoked API key
    └── AuditError               the audit log cannot be written or fails verification
"""

from __future__ import annotations

__all__ = [
    "CitelineError",
    "ConfigError",
    "ConnectorError",
    "DatabaseError",
    "AuditError",
    "AuthError",
    "EvaluationError",
    "GenerationError",
    "PrincipalError",
    "SchemaMismatchError",
    "SyncLockedError",
]


class CitelineError(Exception):
    """Base class of every error citeline raises on purpose."""


class ConfigError(CitelineError):
    """The configuration is invalid; the message names the setting and the fix."""


class DatabaseError(CitelineError):
    """PostgreSQL could not be started, reached or migrated."""


class SchemaMismatchError(DatabaseError):
    """The stored index does not fit the configured embedder (e.g. another dimension)."""


class ConnectorError(CitelineError):
    """A source cannot be read at all; nothing was changed in the index."""


class SyncLockedError(CitelineError):
    """Another process holds the sync lock of this source."""


class PrincipalError(CitelineError):
    """A principal is unknown or malformed."""


class EvaluationError(CitelineError):
    """Evaluation input files are malformed."""


class GenerationError(CitelineError):
    """The generation backend cannot answer; the message names the backend and the fix."""


class AuthError(CitelineError):
    """An API key is missing, unknown, revoked or lacks the needed role."""


class AuditError(CitelineError):
    """The audit log cannot be written (the answer is withheld) or its hash chain is broken."""
