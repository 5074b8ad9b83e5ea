"""citeline: permission-aware retrieval and grounded answers over company documents.

The public API is what this module exports; everything else may change between releases.
"""

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

__version__ = "0.1.0"

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
