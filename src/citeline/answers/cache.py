"""The answer cache: generated and verified answers, keyed by everything that decides them, never by who asked.

Retrieval always runs as the asking principal; only generation (and its verification) is skipped on a hit.
The key (:func:`answer_key`) is the sha256 of a canonical JSON of: the question as rewritten (the standalone
question retrieval and verification use) and the asker's own words, the evidence shown (each chunk's id and
the sha256 of its exact text, in prompt order), the prompt's messages (the system prompt and template
included), the backend, the model served (an adapter's served name holds its version), the generation
settings (max_tokens, temperature, stop) and the verification settings (policy, thresholds, the verifier
and its options). Two principals shown different evidence get different keys by construction; an edited or
deleted document changes the evidence, so its old entries are never hit again (they age out: LRU and TTL).

An entry (:class:`CachedAnswer`) holds only what generation and verification produced — the text, the
citations as evidence numbers, the verification, the finish reason, token counts — never a request's own
fields (audit id, latency, sources): the assistant rebuilds those for each asker from the asker's own
retrieval.

Only greedy generations (temperature 0) are cached: a sampled answer is not what the model would say again.
A whole answer and a completed stream of the same key share the entry (both are the verified answer to the
same prompt; a stream's is what it delivered). **Single flight** for whole answers: while one request generates
a key, another whole answer with the same key waits for it (at most ``generation.queue_timeout_s``, the longest a
request waits for the model before ``generation.when_busy`` applies) and is then served from the entry
(:meth:`AnswerCache.lead`); if the leader stored nothing in time (it failed, is still generating, or answered
extractively because the model was busy) the follower goes on as any request: a slot, or the busy policy.
Streams do not wait (they would stall their first byte): two identical streams at the same moment both
generate, and the second to finish replaces the entry.
A promoted adapter misses by construction (its served name is in the key) in every replica; the process
that promotes also drops the old version's entries (:meth:`AnswerCache.clear`).
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from citeline.answers.verification import Verification
from citeline.contracts.generator import ChatMessage, Evidence, GenerationRequest
from citeline.settings import AnswerCacheSettings, AnswerSettings

__all__ = ["AnswerCache", "CachedAnswer", "answer_key", "request_key"]


@dataclass(frozen=True)
class CachedAnswer:
    """What generation and verification produced for one key (nothing about who asked)."""

    verification: Verification  # the delivered text, its citations ([n] into the evidence) and how it was checked
    invalid: int  # citations the model made that named no evidence (removed)
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str
    stopped_early: bool = False

    @property
    def size(self) -> int:
        """Approximate bytes held (the text, the unsupported sentences and a fixed overhead)."""
        v = self.verification
        return 512 + len(v.text.encode()) + sum(len(json.dumps(u.as_dict()).encode()) for u in v.unsupported)


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def answer_key(*, question: str, user_question: str, evidence: Sequence[Evidence],
               messages: Sequence[ChatMessage], backend: str, model: str, generation: Mapping[str, Any],
               verification: Mapping[str, Any]) -> str:
    """The cache key: sha256 of a canonical JSON of everything that decides an answer (the module docstring)."""
    doc = {
        "v": 1,
        "question": question,
        "user_question": user_question,
        "evidence": [[e.n, e.chunk_id, e.document_id, _sha(e.text), e.title, e.url] for e in evidence],
        "messages": [[m.role, m.content] for m in messages],
        "backend": backend,
        "model": model,
        "generation": dict(generation),
        "verification": dict(verification),
    }
    canonical = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def request_key(request: GenerationRequest, *, backend: str, model: str, settings: AnswerSettings,
                verifier: object) -> str:
    """:func:`answer_key` of a generation request for ``model`` (the served name routed to), verified by
    ``verifier`` (its class and options) under the ``answer`` settings (the cache's own excluded)."""
    config = getattr(verifier, "config", None)
    dump = getattr(config, "model_dump", None)
    options = dump(mode="json") if callable(dump) else repr(config)
    return answer_key(question=request.question, user_question=request.user_question, evidence=request.evidence,
                      messages=request.messages, backend=backend, model=model,
                      generation={"max_tokens": request.max_tokens, "temperature": request.temperature,
                                  "stop": list(request.stop)},
                      verification={"answer": settings.model_dump(mode="json", exclude={"cache"}),
                                    "verifier": f"{type(verifier).__module__}.{type(verifier).__qualname__}",
                                    "options": options})


@dataclass
class _Entry:
    value: CachedAnswer
    model: str
    at: float
    size: int


class AnswerCache:
    """In-process, thread-safe, bounded (entries and bytes; least recently used go first), with a TTL."""

    def __init__(self, max_entries: int = 1024, max_bytes: int = 16 << 20, ttl_s: float = 3600.0, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if max_entries < 1 or max_bytes < 1 or ttl_s <= 0:
            raise ValueError("answer cache: max_entries and max_bytes must be at least 1 and ttl_s above 0 "
                             "(set answer.cache.enabled = false to turn it off)")
        self.max_entries, self.max_bytes, self.ttl_s = max_entries, max_bytes, ttl_s
        self._clock = clock
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self._flights: dict[str, tuple[threading.Event, list[int]]] = {}  # key -> (landed, [waiters])
        self.hits = 0
        self.misses = 0

    @classmethod
    def from_settings(cls, settings: AnswerCacheSettings) -> AnswerCache | None:
        """The cache ``answer.cache`` describes, or None when it is disabled."""
        if not settings.enabled:
            return None
        return cls(settings.max_entries, settings.max_bytes, settings.ttl_s)

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    @property
    def bytes(self) -> int:
        with self._lock:
            return self._bytes

    def get(self, key: str, *, count_miss: bool = True) -> CachedAnswer | None:
        """The entry for ``key`` if present and younger than the TTL (counted as a hit or a miss)."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and self._clock() - entry.at >= self.ttl_s:
                self._drop(key)
                entry = None
            if entry is None:
                self.misses += count_miss
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return entry.value

    def put(self, key: str, value: CachedAnswer, *, model: str) -> None:
        """Keep ``value`` under ``key`` (``model``: the served name that generated it, for :meth:`clear`)."""
        size = value.size
        if size > self.max_bytes:
            return  # larger than the whole cache: not kept
        with self._lock:
            if key in self._entries:
                self._drop(key)
            self._entries[key] = _Entry(value, model, self._clock(), size)
            self._bytes += size
            while len(self._entries) > self.max_entries or self._bytes > self.max_bytes:
                self._drop(next(iter(self._entries)))

    def lead(self, key: str, wait_s: float) -> Callable[[], None] | None:
        """Single flight: the caller that finds no generation of ``key`` under way leads it and gets the function
        to call when it is done (stored or not: always call it); a caller that finds one waits until it lands
        (or ``wait_s`` passes) and gets None, then looks the key up again."""
        with self._lock:
            flight = self._flights.get(key)
            if flight is None:
                landed = threading.Event()
                self._flights[key] = (landed, [0])

                def land() -> None:
                    with self._lock:
                        if self._flights.get(key, (None,))[0] is landed:
                            del self._flights[key]
                    landed.set()

                return land
            flight[1][0] += 1
        try:
            flight[0].wait(wait_s)
        finally:
            with self._lock:
                flight[1][0] -= 1
        return None

    def find(self, key: str, *, lead: bool = False, wait_s: float = 0.0) -> tuple[CachedAnswer | None,
                                                                                 Callable[[], None] | None]:
        """:meth:`get`; with ``lead``, a miss joins the single flight of ``key`` (:meth:`lead`): (the entry, None)
        for a hit or a follower, (None, the function that ends the flight) for the leader. Counted once."""
        hit = self.get(key, count_miss=not lead)
        if hit is not None or not lead:
            return hit, None
        land = self.lead(key, wait_s)
        if land is None:  # a follower: the leader's entry, if it stored one
            return self.get(key), None
        with self._lock:
            self.misses += 1
        return None, land

    def waiting(self, key: str) -> int:
        """How many callers wait for the generation of ``key`` now (for tests and metrics)."""
        with self._lock:
            flight = self._flights.get(key)
            return flight[1][0] if flight else 0

    def clear(self, model: str | None = None) -> int:
        """Drop the entries generated by ``model`` (every entry when None); how many were dropped."""
        with self._lock:
            keys = [k for k, e in self._entries.items() if model is None or e.model == model]
            for k in keys:
                self._drop(k)
            return len(keys)

    def _drop(self, key: str) -> None:
        entry = self._entries.pop(key)
        self._bytes -= entry.size
