"""A LlamaIndex query engine and a LangChain chain that generate with a real model (``citeline model-server``
serving SmolLM2 over its OpenAI-compatible API), built on citeline's retriever as alice and as bob: each answer's
sources are what that principal may see, and the prompt the model got never held the other's documents."""

from __future__ import annotations

from typing import Any

import openai
import pytest

from tests.e2e.test_generation import model_server  # noqa: F401  (the module-scoped model server)
from tests.integration.test_integrations import (  # noqa: F401  (cl: the corpus synced as llamahub sources)
    MAY_SEE,
    QUESTIONS,
    ROLLBACK,
    SALARY,
    SECRET_OF,
    check_only_allowed,
    cl,
)

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

MAX_TOKENS = 32
# per principal: its own document's question and the other's (where a leak would show); on a loaded 2-core
# machine a generation takes ~20 s, so not all of QUESTIONS
ASKED = {"alice": QUESTIONS[:2], "bob": QUESTIONS[1::-1]}


def generate(base_url: str, model: str, messages: list[dict[str, str]]) -> str:
    client = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=120)
    reply = client.chat.completions.create(model=model, messages=messages,  # type: ignore[arg-type]
                                           max_tokens=MAX_TOKENS, temperature=0)
    assert reply.usage is not None and reply.usage.completion_tokens > 0  # the model really generated
    return reply.choices[0].message.content or ""


def served_llm(base_url: str, model: str, prompts: list[str]) -> Any:
    """A LlamaIndex LLM over the model server's /v1/chat/completions (recording every prompt it is sent)."""
    from llama_index.core.llms import CompletionResponse, CustomLLM, LLMMetadata
    from llama_index.core.llms.callbacks import llm_completion_callback

    class Served(CustomLLM):
        @property
        def metadata(self) -> LLMMetadata:
            return LLMMetadata(context_window=4096, num_output=MAX_TOKENS, model_name=model)

        @llm_completion_callback()
        def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
            prompts.append(prompt)
            return CompletionResponse(text=generate(base_url, model, [{"role": "user", "content": prompt}]))

        @llm_completion_callback()
        def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any):  # type: ignore[override]
            raise NotImplementedError

    return Served()


def assert_prompts_clean(user: str, prompts: list[str]) -> None:
    assert prompts, "the model was never asked"
    for source, secret in SECRET_OF.items():
        if source not in MAY_SEE[user]:
            assert not any(secret in p for p in prompts), f"{source}'s text reached the model for {user}"


def test_a_llamaindex_query_engine_with_a_real_model_as_two_principals(cl, model_server, smollm2_dir):  # noqa: F811
    from llama_index.core.query_engine import RetrieverQueryEngine

    from citeline.integrations.llama_index import CitelineRetriever

    for user, own in (("alice", SALARY), ("bob", ROLLBACK)):
        prompts: list[str] = []
        engine = RetrieverQueryEngine.from_args(CitelineRetriever.in_process(cl, user, k=4),
                                                llm=served_llm(model_server, smollm2_dir.name, prompts))
        for question in ASKED[user]:
            response = engine.query(question)
            assert str(response).strip(), "no answer text"
            nodes = response.source_nodes
            check_only_allowed(user, [n.node.metadata["source"] for n in nodes], [n.node.get_content() for n in nodes])
        assert_prompts_clean(user, prompts)
        assert any(own in p for p in prompts), f"{user}'s own evidence never reached the model"


def test_a_langchain_chain_with_a_real_model_as_two_principals(cl, model_server, smollm2_dir):  # noqa: F811
    from langchain_core.prompts import ChatPromptTemplate
    from langchain_core.runnables import RunnableLambda, RunnablePassthrough

    from citeline.integrations.langchain import CitelineRetriever

    prompt = ChatPromptTemplate.from_messages([
        ("system", "Answer in one sentence from the numbered context only."),
        ("user", "Context:\n{context}\n\nQuestion: {question}")])
    roles = {"human": "user", "ai": "assistant", "system": "system"}

    for user, own in (("alice", SALARY), ("bob", ROLLBACK)):
        sent: list[str] = []

        def model(value: Any, sent: list[str] = sent) -> str:
            messages = [{"role": roles[m.type], "content": str(m.content)} for m in value.to_messages()]
            sent.append("\n".join(m["content"] for m in messages))
            return generate(model_server, smollm2_dir.name, messages)

        def context(docs: list[Any]) -> str:
            return "\n".join(f"[{n}] {d.metadata['title']}: {d.page_content}" for n, d in enumerate(docs, 1))

        retriever = CitelineRetriever.in_process(cl, user, k=4)
        chain = {"context": retriever | RunnableLambda(context), "question": RunnablePassthrough()} | prompt \
            | RunnableLambda(model)
        for question in ASKED[user]:
            assert chain.invoke(question).strip()
        assert_prompts_clean(user, sent)
        assert any(own in s for s in sent), f"{user}'s own evidence never reached the model"
