"""Every exception citeline raises on purpose, in one tree.

Per-item problems (one file that does not parse, one ticket with a bad field) are not exceptions:
connectors yield them as :class:`citeline.contracts.connector.Failure` values and the sync goes on.
Exceptions are for operations that fail as a whole; each message names the thing and the fix.

    CitelineError
    ├── ConfigError              bad citeline.toml / environment, unknown source or plugin
    ├── DatabaseError            cannot start or reach PostgreSQL, pgvector missing, schema mismatch
    │   ├── SchemaMismatchError  the index was built with another embedding dimension
    │   └── MigrationChecksumError  an applied migration's file was edited since it ran
    ├── ConnectorError           a source cannot be read at all (missing folder, broken credentials)
    ├── SyncLockedError          another process is syncing the same source
    ├── PrincipalError           unknown or malformed principal
    │   └── ScimError            a SCIM request refused (RFC 7644 status and scimType), nothing changed
    ├── EvaluationError          malformed BEIR files
    ├── TrainingError            an adapter cannot be trained (bad data, no GPU for QLoRA, refused result)
    ├── EmbeddingError           the remote embedding server cannot embed (down, 401, bad reply)
    ├── GenerationError          the model backend cannot answer (down, timeout)
    │   └── ModelNotFoundError   the requested model or adapter is not served
    ├── OverloadedError          no generation slot (or request slot) free in time: retry later (503)
    ├── AuthError                missing, unknown or revoked API key
    ├── ForbiddenError           authenticated, but not allowed (another team's adapter)
    ├── AdapterError             an adapter cannot be registered, promoted or loaded
    └── AuditError               the audit log cannot be written or fails verification
"""

from __future__ import annotations

__all__ = [
    "AdapterError",
    "AuditError",
    "AuthError",
    "CitelineError",
    "ConfigError",
    "ConnectorError",
    "DatabaseError",
    "EmbeddingError",
    "EvaluationError",
    "ForbiddenError",
    "GenerationError",
    "MigrationChecksumError",
    "ModelNotFoundError",
    "OverloadedError",
    "PrincipalError",
    "SchemaMismatchError",
    "ScimError",
    "SyncLockedError",
    "TrainingError",
]


class CitelineError(Exception):
    """Base class of every error citeline raises on purpose."""


class ConfigError(CitelineError):
    """The configuration is invalid; the message names the setting and the fix."""


class DatabaseError(CitelineError):
    """PostgreSQL could not be started, reached or migrated."""


class SchemaMismatchError(DatabaseError):
    """The stored index does not fit the configured embedder (e.g. another dimension)."""


class MigrationChecksumError(DatabaseError):
    """An applied migration's file was edited since it ran (migrations are append-only)."""


class ConnectorError(CitelineError):
    """A source cannot be read at all; nothing was changed in the index."""


class SyncLockedError(CitelineError):
    """Another process holds the sync lock of this source."""


class PrincipalError(CitelineError):
    """A principal is unknown or malformed."""


class EvaluationError(CitelineError):
    """Evaluation input files are malformed."""


class EmbeddingError(CitelineError):
    """The embedding server cannot embed; the message names the server (never the key) and the fix."""


class GenerationError(CitelineError):
    """The generation backend cannot answer; the message names the backend and the fix."""


class TrainingError(CitelineError):
    """An adapter cannot be trained or evaluated: bad data, a missing GPU or package, a refused result."""


class AuthError(CitelineError):
    """An API key is missing, unknown, revoked or lacks the needed role."""


class AuditError(CitelineError):
    """The audit log cannot be written (the answer is withheld) or its hash chain is broken."""


class ModelNotFoundError(GenerationError):
    """The request names a model or adapter that the backend does not serve."""


class OverloadedError(CitelineError):
    """The server is busy: no generation slot came free within the bounded wait. Retry after a while."""


class ForbiddenError(CitelineError):
    """The caller is authenticated but may not use what it asked for (e.g. another team's adapter)."""


class AdapterError(CitelineError):
    """An adapter cannot be registered, promoted or loaded; the message names the problem and the fix."""


class ScimError(PrincipalError):
    """A SCIM 2.0 request refused (malformed body, unknown id, a filter not supported, a conflict, too big);
    ``status`` and ``scim_type`` are what the reply carries (RFC 7644 §3.12). Nothing was changed."""

    def __init__(self, message: str, *, status: int = 400, scim_type: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.scim_type = scim_type
