"""Prometheus metrics of one server (its own registry, so tests can build many apps in one process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector

__all__ = ["Metrics"]

_MS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        # the server process's memory, CPU and open files (process_resident_memory_bytes: watch it under load)
        ProcessCollector(registry=self.registry)
        self.requests = Counter("citeline_requests", "HTTP requests by endpoint and status",
                                ["endpoint", "status"], registry=self.registry)
        self.stage = Histogram("citeline_stage_latency_seconds", "latency per answer stage",
                               ["stage"], buckets=_MS_BUCKETS, registry=self.registry)
        self.answers = Counter("citeline_answers", "answers by outcome", ["outcome"], registry=self.registry)
        self.retrieval_hits = Histogram("citeline_retrieval_hits", "evidence pieces shown per answer",
                                        buckets=(0, 1, 2, 3, 4, 6, 8, 12, 20), registry=self.registry)
        self.invalid_citations = Counter("citeline_invalid_citations", "citations removed because no such evidence",
                                         registry=self.registry)
        self.verification = Counter("citeline_answer_verification", "answers by verification outcome: verified "
                                    "(every delivered sentence supported), fallback (replaced by the extractive "
                                    "answer), flagged (unsupported sentences kept and marked), unchecked",
                                    ["outcome", "policy"], registry=self.registry)
        self.unsupported = Counter("citeline_unsupported_sentences", "sentences of model answers judged unsupported "
                                   "(dropped, replaced or flagged by the policy)", ["policy"], registry=self.registry)
        self.answer_cache = Counter("citeline_answer_cache", "answer cache lookups by result: hit (generation "
                                    "skipped: the same prompt and evidence were answered before) or miss",
                                    ["result"], registry=self.registry)
        self.feedback = Counter("citeline_feedback", "feedback given on answers (POST /v1/feedback), by the answer's "
                                "team, the model that answered (an adapter's served name holds its version) and the "
                                "rating (up, down); corrected: with a corrected answer", ["team", "model", "rating",
                                                                                         "corrected"],
                                registry=self.registry)
        self.auth_failures = Counter("citeline_auth_failures", "requests refused for a missing or bad key",
                                     registry=self.registry)
        self.rejected = Counter("citeline_rejected_requests", "requests refused at the edge before any work, by "
                                "reason: unauthenticated, auth_rate_limited, rate_limited, body_too_large, bad_text, "
                                "database_unavailable (the key lookup timed out)",
                                ["reason"], registry=self.registry)
        self.pool_size = Gauge("citeline_db_pool_size", "connections in the pool", registry=self.registry)
        self.pool_available = Gauge("citeline_db_pool_available", "idle connections", registry=self.registry)
        self.pool_waiting = Gauge("citeline_db_pool_requests_waiting", "requests waiting for a connection",
                                  registry=self.registry)
        self.requests_busy = Gauge("citeline_requests_in_progress", "requests holding a request slot "
                                   "(server.max_concurrent_requests)", registry=self.registry)
        self.requests_queued = Gauge("citeline_requests_queued", "requests waiting for a request slot "
                                     "(server.queue_timeout_s at most)", registry=self.registry)
        self.generations_busy = Gauge("citeline_generations_in_progress", "generations holding a generation slot "
                                      "(generation.max_concurrent)", registry=self.registry)

    def observe_answer(self, latency_ms: dict[str, float], *, refused: bool, shown: int, invalid: int,
                       policy: str = "off", verified: bool = False, fallback: bool = False,
                       unsupported: int = 0, cache: str = "off") -> None:
        outcome = ("fallback" if fallback else "flagged" if policy == "flag" and unsupported
                   else "verified" if verified else "unchecked")
        self.verification.labels(outcome, policy).inc()
        if cache in ("hit", "miss"):  # off: not looked up (refused before generation, sampled, cache disabled)
            self.answer_cache.labels(cache).inc()
        if unsupported:
            self.unsupported.labels(policy).inc(unsupported)
        for stage, ms in latency_ms.items():
            self.stage.labels(stage.removesuffix("_ms")).observe(ms / 1000)
        self.answers.labels("refused" if refused else "answered").inc()
        self.retrieval_hits.observe(shown)
        if invalid:
            self.invalid_citations.inc(invalid)
