"""citeline's permission-aware search as a LangChain retriever (the ``[langchain]`` extra).

:class:`CitelineRetriever` is a ``langchain_core`` ``BaseRetriever`` bound to one principal: in process
(:meth:`CitelineRetriever.in_process`: a :class:`citeline.facade.Citeline` and a user) or against a citeline
server (:meth:`CitelineRetriever.over_http`: its URL and an API key). It is a Runnable like any retriever::

    from citeline.integrations.langchain import CitelineRetriever

    retriever = CitelineRetriever.over_http("https://citeline.example", api_key=os.environ["CITELINE_API_KEY"])
    chain = retriever | format_docs | prompt | model

Each result is a ``Document`` (``id``: the chunk id) with the chunk's access-checked text and metadata
``title``, ``url``, ``source``, ``external_id``, ``document_id``, ``chunk_id``, ``span_start``, ``span_end``,
``score``. Without ``langchain-core`` installed, importing this module raises a
:class:`citeline.errors.ConfigError` naming the extra (``pip install 'citeline[langchain]'``).
"""

from __future__ import annotations

from typing import Any

from pydantic import ConfigDict

from citeline.domain import SearchHit, SearchMode
from citeline.facade import Citeline
from citeline.integrations._hits import HitSource, InProcess, OverHTTP, hit_metadata
from citeline.plugins import missing_module_error

try:
    from langchain_core.callbacks import CallbackManagerForRetrieverRun
    from langchain_core.documents import Document
    from langchain_core.retrievers import BaseRetriever
except ModuleNotFoundError as exc:
    raise missing_module_error("citeline.integrations.langchain", exc) from exc

__all__ = ["CitelineRetriever", "to_document"]


class CitelineRetriever(BaseRetriever):
    """A LangChain retriever over citeline's index, as one principal (see the module docstring)."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    source: Any  # a citeline.integrations._hits.HitSource (InProcess or OverHTTP)

    @classmethod
    def in_process(cls, cl: Citeline, user: str, *, k: int | None = None,
                   mode: SearchMode = SearchMode.HYBRID, **kwargs: Any) -> CitelineRetriever:
        """Search through ``cl`` as ``user`` (a known principal; :class:`citeline.errors.PrincipalError` if not)."""
        return cls(source=InProcess(cl, user, k=k, mode=mode), **kwargs)

    @classmethod
    def over_http(cls, url: str, api_key: str, *, k: int | None = None, mode: SearchMode = SearchMode.HYBRID,
                  timeout: float = 30.0, **kwargs: Any) -> CitelineRetriever:
        """Search the citeline server at ``url`` as the principal of ``api_key`` (``POST /v1/search``, audited
        there). A refused key raises :class:`citeline.errors.AuthError` on the first query."""
        return cls(source=OverHTTP(url, api_key, k=k, mode=mode, timeout=timeout), **kwargs)

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun) -> list[Document]:
        source: HitSource = self.source
        return [to_document(hit) for hit in source.hits(query)]


def to_document(hit: SearchHit) -> Document:
    """One citeline hit as a LangChain document (``id``: the chunk id)."""
    return Document(id=str(hit.chunk_id), page_content=hit.text, metadata=hit_metadata(hit))
