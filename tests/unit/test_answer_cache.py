"""The answer cache (pure Python): the key's canonical form and components, the LRU bounds, the TTL, threads.

The cache in the assistant (real PostgreSQL, the real embedder, access control) is tested in
tests/integration/test_answer_cache.py.
"""

from __future__ import annotations

import threading
from dataclasses import replace
from typing import Any

import pytest

from citeline.answers.cache import AnswerCache, CachedAnswer, answer_key, request_key
from citeline.answers.lexical_verifier import LexicalVerifier
from citeline.answers.verification import Verification
from citeline.contracts.generator import ChatMessage, Evidence, GenerationRequest
from citeline.settings import AnswerCacheSettings, AnswerSettings, Settings

pytestmark = pytest.mark.unit

E1 = Evidence(1, 11, 101, "Returns", None, "Returns are accepted within 30 days.", 0.9)
E2 = Evidence(2, 12, 102, "Warranty", "https://x/w", "The warranty lasts two years.", 0.8)
MESSAGES = (ChatMessage("system", "rules"), ChatMessage("user", "evidence and question"))


def _parts(**over: Any) -> dict[str, Any]:
    parts: dict[str, Any] = {
        "question": "how long is the warranty", "user_question": "and the warranty?", "evidence": (E1, E2),
        "messages": MESSAGES, "backend": "embedded", "model": "base",
        "generation": {"max_tokens": 256, "temperature": 0.0, "stop": []},
        "verification": {"policy": "fallback", "min_supported": 0.5},
    }
    return {**parts, **over}


def _answer(text: str = "Two years [2].") -> CachedAnswer:
    return CachedAnswer(Verification(text, "fallback", verified=True, cited=(2,)), 0, 100, 5, "stop")


def test_the_key_is_canonical_dict_order_does_not_change_it():
    a = answer_key(**_parts())
    b = answer_key(**_parts(generation={"stop": [], "temperature": 0.0, "max_tokens": 256},
                            verification={"min_supported": 0.5, "policy": "fallback"}))
    assert a == b and len(a) == 64


@pytest.mark.parametrize("change", [
    {"question": "how long is the guarantee"},
    {"user_question": "and the guarantee?"},
    {"evidence": (E2, E1)},  # same chunks, another prompt order
    {"evidence": (E1,)},  # one chunk fewer (a principal who may not see the other)
    {"evidence": (E1, replace(E2, text="The warranty lasts three years."))},  # an edited document
    {"evidence": (E1, replace(E2, chunk_id=13))},  # another chunk with the same text
    {"evidence": (E1, replace(E2, title="Guarantee"))},
    {"messages": (ChatMessage("system", "other rules"), MESSAGES[1])},  # another template
    {"messages": (MESSAGES[0], ChatMessage("assistant", "earlier"), MESSAGES[1])},  # history in the prompt
    {"backend": "openai"},
    {"model": "support-v2"},  # an adapter (its served name holds the version)
    {"generation": {"max_tokens": 128, "temperature": 0.0, "stop": []}},
    {"generation": {"max_tokens": 256, "temperature": 0.0, "stop": ["\n"]}},
    {"verification": {"policy": "drop", "min_supported": 0.5}},
    {"verification": {"policy": "fallback", "min_supported": 0.6}},
])
def test_every_component_changes_the_key(change: dict[str, Any]):
    assert answer_key(**_parts(**change)) != answer_key(**_parts())


def test_request_key_covers_the_verifier_options_and_the_answer_settings_but_not_the_cache_settings():
    request = GenerationRequest(MESSAGES, max_tokens=64, question="q", evidence=(E1,), user_question="q")
    verifier = LexicalVerifier()

    def key(settings: AnswerSettings = AnswerSettings(), v: object = verifier, r: GenerationRequest = request) -> str:
        return request_key(r, backend="embedded", model="base", settings=settings, verifier=v)

    assert key() == key(AnswerSettings(cache=AnswerCacheSettings(ttl_s=5, max_entries=3)))
    assert key() != key(AnswerSettings(min_supported=0.9))
    assert key() != key(AnswerSettings(verify="flag"))
    assert key() != key(v=LexicalVerifier(LexicalVerifier.Config.model_validate({"min_coverage": 0.95})))
    assert key() != key(r=replace(request, max_tokens=65))
    assert key() != key(r=replace(request, evidence=(replace(E1, text=E1.text + " "),)))


def test_an_entry_is_found_by_its_key_and_hits_and_misses_are_counted():
    cache = AnswerCache(10, 1 << 20, 60)
    assert cache.get("k") is None
    cache.put("k", _answer(), model="base")
    assert cache.get("k") == _answer()
    assert (cache.hits, cache.misses) == (1, 1)


def test_entries_are_bounded_least_recently_used_go_first():
    cache = AnswerCache(max_entries=2, max_bytes=1 << 20, ttl_s=60)
    cache.put("a", _answer("A [1]."), model="base")
    cache.put("b", _answer("B [1]."), model="base")
    assert cache.get("a") is not None  # a is now the most recently used
    cache.put("c", _answer("C [1]."), model="base")
    assert len(cache) == 2 and cache.get("b") is None
    assert cache.get("a") is not None and cache.get("c") is not None


def test_bytes_are_bounded_and_an_answer_larger_than_the_cache_is_not_kept():
    small = _answer("x" * 100)
    cache = AnswerCache(max_entries=100, max_bytes=small.size * 3, ttl_s=60)
    for i in range(10):
        cache.put(str(i), small, model="base")
    assert len(cache) == 3 and cache.bytes <= cache.max_bytes
    assert [k for k in map(str, range(10)) if cache.get(k)] == ["7", "8", "9"]
    cache.put("huge", _answer("y" * small.size * 4), model="base")
    assert cache.get("huge") is None and len(cache) == 3


def test_entries_expire_after_the_ttl():
    now = [0.0]
    cache = AnswerCache(10, 1 << 20, ttl_s=30, clock=lambda: now[0])
    cache.put("k", _answer(), model="base")
    now[0] = 29.9
    assert cache.get("k") is not None
    now[0] = 30.0
    assert cache.get("k") is None and len(cache) == 0 and cache.bytes == 0


def test_clear_drops_one_models_entries_or_all():
    cache = AnswerCache(10, 1 << 20, 60)
    cache.put("a", _answer(), model="support-v1")
    cache.put("b", _answer(), model="base")
    assert cache.clear("support-v1") == 1
    assert cache.get("a") is None and cache.get("b") is not None
    assert cache.clear() == 1 and len(cache) == 0 and cache.bytes == 0


def test_threads_share_one_consistent_cache():
    cache = AnswerCache(max_entries=50, max_bytes=1 << 20, ttl_s=60)
    errors: list[BaseException] = []

    def work(t: int) -> None:
        try:
            for i in range(400):
                key = f"{(t * 7 + i) % 80}"
                got = cache.get(key)
                assert got is None or got.verification.text == key
                cache.put(key, _answer(key), model=f"m{t % 2}")
                if i % 97 == 0:
                    cache.clear(f"m{t % 2}")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors
    assert len(cache) <= 50
    assert cache.hits + cache.misses == 8 * 400
    assert cache.bytes == sum(_answer(k).size for k in list(cache._entries))


def test_settings_default_on_bounded_and_disabled_means_no_cache():
    s = Settings(answer={"cache": {"max_entries": 5}})
    assert s.answer.cache.enabled and s.answer.cache.max_entries == 5
    assert isinstance(AnswerCache.from_settings(s.answer.cache), AnswerCache)
    assert AnswerCache.from_settings(AnswerCacheSettings(enabled=False)) is None
    with pytest.raises(ValueError, match="max_entries"):
        AnswerCache(0, 1024, 1)


def test_metrics_count_hits_and_misses_and_nothing_for_answers_not_looked_up():
    from citeline.serving.metrics import Metrics

    m = Metrics()
    for cache in ("hit", "miss", "miss", "off"):
        m.observe_answer({"total_ms": 1.0}, refused=False, shown=1, invalid=0, cache=cache)

    def value(result: str) -> float | None:
        return m.registry.get_sample_value("citeline_answer_cache_total", {"result": result})

    assert (value("hit"), value("miss"), value("off")) == (1.0, 2.0, None)
