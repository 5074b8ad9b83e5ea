"""The support-assistant server: an OpenAI-compatible API, ``/v1/ask``, admin endpoints and the chat page.

``create_app(citeline)`` builds the FastAPI app over a :class:`citeline.Citeline` facade; ``citeline
serve`` runs it with uvicorn. Its routes live in :mod:`citeline.serving.api`, one router per concern,
and reach the facade through ``app.state`` (FastAPI dependencies). Every request that retrieves
authenticates an API key first and runs as that key's principal (never as a user named in the request
body). Endpoint handlers are plain ``def``: FastAPI runs them in its thread pool, which matches the
blocking database pool and model backends. The probes are ``async`` and never wait for a request thread;
every other request waits a bounded time for a request slot, a generation slot, a pooled connection and
its SQL locks, else it is answered 503 with ``Retry-After`` (:mod:`citeline.serving.capacity`). A stream
is produced by one thread for its whole length.

==========================  ======  ==============================================================
``/``                       GET     the chat page (log in with an API key)
``/healthz`` ``/readyz``    GET     liveness; readiness (database reachable, backend built)
``/metrics``                GET     Prometheus text
``/v1/models``              GET     ``citeline`` (the grounded assistant) and the backend's models
``/v1/chat/completions``    POST    OpenAI chat completions; the last message (a user's) is the question
``/v1/ask``                 POST    question → answer, citations, refusal flag, latency (``stream``: SSE)
``/v1/feedback``            POST    up/down, reason, correction on one of the caller's answers (its audit id)
``/v1/admin/...``           *       sources, keys, principals, adapters, audit, view-as, feedback (admin)
``/scim/v2/...``            *       SCIM 2.0 Users, Groups, discovery (the ``scim`` principal source's token)
``/auth/...``               GET     sign-in with OpenID Connect for the pages (when ``[auth.oidc]`` is set)
==========================  ======  ==============================================================

Chat completions: the last message must be the user's question (422 otherwise, as for an empty one); the
user and assistant messages before it are the conversation, passed to the assistant as ``history`` (a
follow-up is rewritten for retrieval, earlier turns inform the answer). Clients' ``system``, ``developer``
and ``tool`` messages are ignored: citeline's rules are the only system message the model sees.
``max_tokens`` (or ``max_completion_tokens``) is capped at the server's ``generation.max_tokens``;
``temperature`` and ``stop`` (a string or up to 4) are passed on; ``finish_reason`` is the generation's.
Responses and chunks are the ``openai`` package's types plus citeline's fields (citations, sources,
refused, audit_id, verification, ``retrieval_question``, ...).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import anyio.to_thread
from fastapi import FastAPI

from citeline.facade import Citeline
from citeline.serving.api import (
    admin,
    admin_adapters,
    admin_audit,
    admin_feedback,
    admin_sources,
    ask,
    chat,
    errors,
    feedback,
    page,
    probes,
    search,
)
from citeline.serving.api import auth as sign_in
from citeline.serving.api import scim as scim_api
from citeline.serving.api.edge import Edge
from citeline.serving.capacity import Admission, ReadinessProbe, RequestSlots
from citeline.serving.limits import Limits
from citeline.serving.metrics import Metrics

__all__ = ["create_app"]


def create_app(cl: Citeline) -> FastAPI:
    """The API over ``cl``: routers, error handlers, and the middleware from the outside in: Edge, Limits,
    Admission (so refused requests take no slot, and every answer carries the security headers)."""
    server = cl.settings.server
    # Bounded waits (citeline.serving.capacity): request slots at the edge, generation slots in the
    # assistant, lock and statement timeouts on the request path's SQL, the pool's own timeout.
    cl.db.limit_requests(lock_timeout_s=cl.settings.database.lock_timeout_s,
                         statement_timeout_s=cl.settings.database.statement_timeout_s)
    admitted = server.max_concurrent_requests or cl.db.pool.max_size + cl.assistant.slots.limit
    app = FastAPI(title="citeline", version="0.1.0", docs_url="/docs", redoc_url=None, lifespan=_lifespan)
    app.state.citeline = cl
    app.state.metrics = metrics = Metrics()
    app.state.request_slots = RequestSlots(admitted, server.queue_timeout_s, server.retry_after_s)
    app.state.readiness = ReadinessProbe(cl.db.url, server.probe_timeout_s)
    errors.install(app)
    for part in (page, probes, chat, ask, search, feedback, admin, admin_sources, admin_adapters, admin_audit,
                 admin_feedback):
        app.include_router(part.router)
    app.include_router(scim_api.router)  # /scim/v2: provisioning by the identity provider (its own token)
    sessions = sign_in.install(app, cl)  # /auth/* when [auth.oidc] is set: pages sign in with OpenID Connect
    app.add_middleware(Admission, slots=app.state.request_slots)  # inside Limits: refused requests take no slot
    app.add_middleware(Limits, settings=server, authenticate=cl.keys.authenticate, metrics=metrics,
                       lookups=cl.settings.database.pool_max_size, sessions=sessions)
    app.add_middleware(Edge, metrics=metrics)  # outermost: its headers and counts cover Limits' answers too
    return app


@contextlib.asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    cl: Citeline = app.state.citeline
    # An admitted request holds at most one worker thread at a time (its stream, one thread for its
    # whole length): a few more threads than admitted requests means none waits for a thread.
    anyio.to_thread.current_default_thread_limiter().total_tokens = app.state.request_slots.limit + 4
    await anyio.to_thread.run_sync(lambda: cl.backend)  # built before the first probe (serve did already)
    yield
    await app.state.readiness.close()
