"""The extension points' contracts: one small module per Protocol, importing nothing else of citeline.

Each module's docstring is the contract: how the plugin is built (:func:`citeline.plugins.create`),
what it must guarantee, and which ``citeline.testing`` suite checks it. Built-ins and third-party
plugins register under the same entry-point groups and run the same suites.

===================  =============================================  ==============================
group (citeline.*)   Protocol (citeline.contracts.*)                contract suite (citeline.*)
===================  =============================================  ==============================
connectors           ``connector.Connector``                        ``testing.connectors``
chunkers             ``chunker.Chunker``                            ``testing.chunkers``
embedders            ``embedder.Embedder``                          ``testing.embedders``
generators           ``generator.GenerationBackend``                ``testing.generators``
rerankers            ``reranker.Reranker``                          ``testing.rerankers``
verifiers            ``verifier.Verifier``                          ``testing.verifiers``
principal_sources    ``principal_source.PrincipalSource``           ``testing.principal_sources``
===================  =============================================  ==============================

How each group's classes are built (``cls(config, **context)``) is tabled in :mod:`citeline.plugins`.
The modules may import :mod:`citeline.domain`, :mod:`citeline.errors` and each other, nothing else of
citeline (the foundation layer).
"""

from citeline.contracts.chunker import Chunker
from citeline.contracts.connector import Connector, ConnectorConfig
from citeline.contracts.embedder import Embedder
from citeline.contracts.generator import AdapterHost, GenerationBackend
from citeline.contracts.principal_source import Listing, PrincipalSource
from citeline.contracts.reranker import Reranker
from citeline.contracts.verifier import Verifier

__all__ = ["AdapterHost", "Chunker", "Connector", "ConnectorConfig", "Embedder", "GenerationBackend", "Listing",
           "PrincipalSource", "Reranker", "Verifier"]
