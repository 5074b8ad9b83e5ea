"""The embedded model server: any :class:`GenerationBackend` behind vLLM's OpenAI-compatible surface.

Production generation is vLLM; this server speaks the same subset so citeline's ``openai`` backend, the
adapter hot-swap code and tests talk to either without knowing which:

=================================  =====================================================================
``GET  /v1/models``                the base model, then loaded adapters with ``parent`` = the base
``POST /v1/chat/completions``      ``model`` = base or adapter name; ``stream`` gives SSE chunks
``POST /tokenize``                 ``{"prompt": ...}`` → ``{"count", "tokens": [], "max_model_len"}``
``POST /v1/embeddings``            the local embedder (``embedding.*``; loaded on the first request) as
                                   OpenAI's embeddings; ``model`` = its model folder's name
``POST /v1/load_lora_adapter``     ``{"lora_name", "lora_path"}`` (backends that host adapters)
``POST /v1/unload_lora_adapter``   ``{"lora_name"}``
=================================  =====================================================================

It has no authentication: bind it to loopback (as vLLM is usually run behind the API server).
"""

from __future__ import annotations

import base64
import json
import threading
import time
import uuid
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any, Literal, cast

from fastapi import FastAPI
from fastapi.responses import JSONResponse, StreamingResponse
from openai.types import CreateEmbeddingResponse, Embedding
from openai.types.create_embedding_response import Usage
from pydantic import BaseModel, Field

from citeline.contracts.embedder import Embedder
from citeline.contracts.generator import AdapterHost, ChatMessage, GenerationBackend, GenerationRequest
from citeline.errors import GenerationError

__all__ = ["create_model_app"]


class _Message(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: str


class _Chat(BaseModel):
    model: str
    messages: list[_Message] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1, le=8192)
    temperature: float = Field(0.0, ge=0.0, le=2.0)
    stream: bool = False
    stop: str | list[str] | None = None


class _Tokenize(BaseModel):
    prompt: str
    model: str | None = None
    add_special_tokens: bool = False


class _Embed(BaseModel):
    model: str
    input: str | list[str] = Field(min_length=1, max_length=2048)
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None
    user: str | None = None


class _Load(BaseModel):
    lora_name: str = Field(min_length=1, max_length=200)
    lora_path: str
    load_inplace: bool = False


class _Unload(BaseModel):
    lora_name: str


def _err(status: int, message: str, kind: str = "BadRequestError") -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "code": status}}, status_code=status)


def create_model_app(backend: GenerationBackend, *, max_tokens: int = 256, context_tokens: int = 2048,
                     embedder: Callable[[], Embedder] | None = None) -> FastAPI:
    """``embedder`` builds the embedder ``/v1/embeddings`` serves (called once, on the first request)."""
    app = FastAPI(title=f"citeline model server ({backend.name})")
    if embedder is not None:
        _embeddings_route(app, embedder)

    def request_for(body: _Chat) -> GenerationRequest | JSONResponse:
        if body.model not in backend.models():
            return _err(404, f"The model `{body.model}` does not exist.", "NotFoundError")
        model = None if body.model == backend.base_model else body.model
        stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
        if len(stop) > 4:
            return _err(400, "at most 4 stop sequences")
        return GenerationRequest(tuple(ChatMessage(m.role, m.content) for m in body.messages), model=model,
                                 max_tokens=body.max_tokens or max_tokens, temperature=body.temperature,
                                 stop=tuple(s for s in stop if s))

    @app.get("/v1/models")
    def models() -> dict[str, Any]:
        now = int(time.time())
        base = backend.base_model
        return {"object": "list", "data": [
            {"id": m, "object": "model", "created": now, "owned_by": "citeline", "root": base,
             "parent": None if m == base else base, "max_model_len": context_tokens} for m in backend.models()]}

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/tokenize")
    def tokenize(body: _Tokenize) -> dict[str, Any]:
        return {"count": backend.count_tokens(body.prompt), "tokens": [], "max_model_len": context_tokens}

    @app.post("/v1/chat/completions", response_model=None)
    def chat(body: _Chat) -> Any:
        req = request_for(body)
        if isinstance(req, JSONResponse):
            return req
        cid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        if body.stream:
            return StreamingResponse(_chunks(req, cid, created, body.model), media_type="text/event-stream")
        try:
            gen = backend.generate(req)
        except GenerationError as exc:
            return _err(500, str(exc), "InternalServerError")
        return {"id": cid, "object": "chat.completion", "created": created, "model": body.model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": gen.text},
                             "finish_reason": gen.finish_reason}],
                "usage": {"prompt_tokens": gen.prompt_tokens, "completion_tokens": gen.completion_tokens,
                          "total_tokens": gen.prompt_tokens + gen.completion_tokens}}

    def _chunks(req: GenerationRequest, cid: str, created: int, model: str) -> Iterator[str]:
        def chunk(delta: dict[str, Any], finish: str | None = None) -> str:
            return "data: " + json.dumps({"id": cid, "object": "chat.completion.chunk", "created": created,
                                          "model": model, "choices": [{"index": 0, "delta": delta,
                                                                       "finish_reason": finish}]}) + "\n\n"
        yield chunk({"role": "assistant", "content": ""})
        finish = "stop"

        def pieces() -> Iterator[str]:
            nonlocal finish
            stream = cast("Generator[str, None, str | None]", backend.stream(req))
            reason = yield from stream  # a backend's stream may return its finish reason
            if isinstance(reason, str) and reason:
                finish = reason

        try:
            for piece in pieces():
                yield chunk({"content": piece})
        except GenerationError as exc:
            yield "data: " + json.dumps({"error": {"message": str(exc), "type": "InternalServerError"}}) + "\n\n"
            return
        yield chunk({}, finish)
        yield "data: [DONE]\n\n"

    @app.post("/v1/load_lora_adapter", response_model=None)
    def load(body: _Load) -> Any:
        if not isinstance(backend, AdapterHost):
            return _err(400, f"the {backend.name} backend does not host LoRA adapters")
        if body.lora_name in backend.adapters() and not body.load_inplace:
            return _err(400, f"The lora adapter '{body.lora_name}' has already been loaded.")
        try:
            if body.lora_name in backend.adapters():  # load_inplace: prove the new files load before the swap,
                trial = f"{body.lora_name}~inplace"    # so a bad replacement leaves the old adapter serving
                backend.load_adapter(trial, Path(body.lora_path))
                backend.unload_adapter(trial)
                backend.unload_adapter(body.lora_name)
            backend.load_adapter(body.lora_name, Path(body.lora_path))
        except GenerationError as exc:
            return _err(404 if "does not exist" in str(exc) or "missing" in str(exc) else 400, str(exc))
        return f"Success: LoRA adapter '{body.lora_name}' added successfully."

    @app.post("/v1/unload_lora_adapter", response_model=None)
    def unload(body: _Unload) -> Any:
        if not isinstance(backend, AdapterHost) or body.lora_name not in backend.adapters():
            return _err(404, f"The lora adapter '{body.lora_name}' cannot be found.", "NotFoundError")
        backend.unload_adapter(body.lora_name)
        return f"Success: LoRA adapter '{body.lora_name}' removed successfully."

    return app


def _embeddings_route(app: FastAPI, build: Callable[[], Embedder]) -> None:
    lock, built = threading.Lock(), cast("list[Embedder]", [])

    def embedder() -> Embedder:
        with lock:  # one model load, however many first requests arrive together
            if not built:
                built.append(build())
            return built[0]

    @app.post("/v1/embeddings", response_model=None)
    def embeddings(body: _Embed) -> Any:
        model = embedder()
        served = model.name.split(":", 1)[-1]  # "sentence-transformers:all-MiniLM-L6-v2" serves "all-MiniLM-L6-v2"
        if body.model != served:
            return _err(404, f"The model `{body.model}` does not exist (this server embeds with `{served}`).",
                        "NotFoundError")
        if body.dimensions is not None and body.dimensions != model.dimension:
            return _err(400, f"this model's embeddings have {model.dimension} dimensions, not {body.dimensions}")
        texts = [body.input] if isinstance(body.input, str) else body.input
        vectors = model.embed_documents(texts)
        tokens = sum(len(model.tokenize(t)) for t in texts)
        rows: list[Any] = ([base64.b64encode(row.astype("<f4").tobytes()).decode() for row in vectors]
                           if body.encoding_format == "base64" else vectors.tolist())  # base64: openai's default
        data = [Embedding.model_construct(index=i, object="embedding", embedding=row) for i, row in enumerate(rows)]
        return CreateEmbeddingResponse.model_construct(
            object="list", model=body.model, data=data, usage=Usage(prompt_tokens=tokens, total_tokens=tokens),
        ).model_dump(mode="json", warnings=False)  # base64 rows are strings where the type says floats
