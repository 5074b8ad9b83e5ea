"""The HTTP API's parts, one module per concern; :func:`citeline.serving.app.create_app` joins them.

==============  ================================================================================
``page``        ``GET /``: the chat page
``probes``      ``/healthz``, ``/readyz``, ``/metrics`` (async: no request slot, no thread)
``chat``        ``/v1/models``, ``/v1/chat/completions`` (OpenAI-compatible)
``ask``         ``/v1/ask``
``search``      ``/v1/search``: the chunks the caller may see (the LlamaIndex and LangChain retrievers' route)
``admin``       ``/v1/admin/...``: keys, principals (admin only)
``admin_*``     the rest of the admin API: ``sources`` (status, sync now, runs), ``adapters``, ``audit`` (verify,
                export, search, replay, view-as), ``feedback`` (per team and model, latest rows); ``admin_models``:
                its typed bodies and replies
``bodies``      request bodies (pydantic; unstorable text refused, 400 ``invalid_text``)
``deps``        ``Annotated`` dependencies: the facade, the metrics, the caller, the admin check
``errors``      error responses in OpenAI's shape and the exception handlers
``edge``        the outermost middleware: security headers, ``Server-Timing``, request counts
``replies``     what the answering routes share (SSE, answer metrics)
==============  ================================================================================
"""
