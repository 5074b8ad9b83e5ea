"""citeline's permission-aware search as a LlamaIndex retriever.

:class:`CitelineRetriever` is a ``llama_index.core`` ``BaseRetriever`` bound to one principal: in process
(:meth:`CitelineRetriever.in_process`: a :class:`citeline.facade.Citeline` and a user) or against a citeline
server (:meth:`CitelineRetriever.over_http`: its URL and an API key). Plug it into any query engine::

    from llama_index.core.query_engine import RetrieverQueryEngine
    from citeline.integrations.llama_index import CitelineRetriever

    retriever = CitelineRetriever.over_http("https://citeline.example", api_key=os.environ["CITELINE_API_KEY"])
    engine = RetrieverQueryEngine.from_args(retriever, llm=my_llm)

Each result is a ``NodeWithScore`` whose ``TextNode`` holds the chunk's access-checked text, its span in the
document (``start_char_idx``/``end_char_idx``) and metadata ``title``, ``url``, ``source``, ``external_id``,
``document_id``, ``chunk_id``, ``span_start``, ``span_end``, ``score`` (a prompt shows title, URL and
source only). llama-index-core is a core dependency of citeline: nothing more to install.
"""

from __future__ import annotations

from typing import Any

from citeline.domain import SearchHit, SearchMode
from citeline.facade import Citeline
from citeline.integrations._hits import NOT_FOR_PROMPTS, HitSource, InProcess, OverHTTP, hit_metadata
from citeline.plugins import missing_module_error

try:
    from llama_index.core.base.base_retriever import BaseRetriever
    from llama_index.core.schema import NodeRelationship, NodeWithScore, QueryBundle, RelatedNodeInfo, TextNode
except ModuleNotFoundError as exc:  # pragma: no cover - llama-index-core is a core dependency
    raise missing_module_error("citeline.integrations.llama_index", exc) from exc

__all__ = ["CitelineRetriever", "to_node"]


class CitelineRetriever(BaseRetriever):
    """A LlamaIndex retriever over citeline's index, as one principal (see the module docstring)."""

    def __init__(self, source: HitSource, **kwargs: Any) -> None:
        """``source``: where hits come from (:class:`citeline.integrations._hits.InProcess` or ``OverHTTP``);
        ``kwargs`` go to LlamaIndex's ``BaseRetriever`` (``callback_manager``, ``verbose``)."""
        super().__init__(**kwargs)
        self.source = source

    @classmethod
    def in_process(cls, cl: Citeline, user: str, *, k: int | None = None,
                   mode: SearchMode = SearchMode.HYBRID, **kwargs: Any) -> CitelineRetriever:
        """Search through ``cl`` as ``user`` (a known principal; :class:`citeline.errors.PrincipalError` if not)."""
        return cls(InProcess(cl, user, k=k, mode=mode), **kwargs)

    @classmethod
    def over_http(cls, url: str, api_key: str, *, k: int | None = None, mode: SearchMode = SearchMode.HYBRID,
                  timeout: float = 30.0, **kwargs: Any) -> CitelineRetriever:
        """Search the citeline server at ``url`` as the principal of ``api_key`` (``POST /v1/search``, audited
        there). A refused key raises :class:`citeline.errors.AuthError` on the first query."""
        return cls(OverHTTP(url, api_key, k=k, mode=mode, timeout=timeout), **kwargs)

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        return [to_node(hit) for hit in self.source.hits(query_bundle.query_str)]


def to_node(hit: SearchHit) -> NodeWithScore:
    """One citeline hit as a LlamaIndex node with its score; the node's source is the citeline document."""
    node = TextNode(id_=f"citeline-chunk-{hit.chunk_id}", text=hit.text, metadata=hit_metadata(hit),
                    start_char_idx=hit.span_start, end_char_idx=hit.span_end,
                    excluded_llm_metadata_keys=list(NOT_FOR_PROMPTS),
                    excluded_embed_metadata_keys=list(NOT_FOR_PROMPTS))
    node.relationships[NodeRelationship.SOURCE] = RelatedNodeInfo(
        node_id=f"citeline-document-{hit.document_id}", metadata={"title": hit.title, "url": hit.url})
    return NodeWithScore(node=node, score=hit.score)
