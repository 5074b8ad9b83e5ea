"""citeline's retrieval inside other frameworks, one module each (imported on demand, never here):

=====================  ==========================================================================================
``llama_index``        ``CitelineRetriever``: a LlamaIndex ``BaseRetriever`` → ``NodeWithScore`` (core install)
``langchain``          ``CitelineRetriever``: a LangChain ``BaseRetriever`` → ``Document`` (``[langchain]`` extra)
=====================  ==========================================================================================

Both are bound to one principal: in process through :class:`citeline.facade.Citeline` as a user, or against
a citeline server's ``POST /v1/search`` with an API key. They sit beside serving and the CLI (above the
facade) and reach the core only through the facade. LlamaHub readers as a source are a connector:
:mod:`citeline.connectors.llamahub`.
"""
