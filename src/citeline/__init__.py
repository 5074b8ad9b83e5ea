"""citeline: permission-aware retrieval and grounded answers over company documents.

The public API is what this module exports; everything else may change between releases.
"""

from importlib import metadata as _metadata

from citeline.domain import Access, Chunk, ContentType, Document, Principal, SearchHit, SearchMode
from citeline.errors import (
    CitelineError,
    ConfigError,
    ConnectorError,
    DatabaseError,
    EvaluationError,
    PrincipalError,
    SchemaMismatchError,
    SyncLockedError,
)
from citeline.facade import Citeline, SourceStatus, build_connector
from citeline.retrieval.search import Retriever, SearchResult
from citeline.settings import Settings

try:  # one source: pyproject.toml's version, as installed
    __version__ = _metadata.version("citeline")
except _metadata.PackageNotFoundError:  # a source tree on sys.path that was never installed
    __version__ = "0+unknown"

__all__ = [
    "Access",
    "Chunk",
    "Citeline",
    "CitelineError",
    "ConfigError",
    "ConnectorError",
    "ContentType",
    "DatabaseError",
    "Document",
    "EvaluationError",
    "Principal",
    "PrincipalError",
    "Retriever",
    "SchemaMismatchError",
    "SearchHit",
    "SearchMode",
    "SearchResult",
    "Settings",
    "SourceStatus",
    "SyncLockedError",
    "__version__",
    "build_connector",
]
