"""The query batcher: concurrent callers get their own vectors, in batches, and errors reach everyone."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from citeline.batching import Batcher as QueryBatcher

pytestmark = pytest.mark.unit


def test_concurrent_queries_are_batched_and_answered_correctly():
    sizes: list[int] = []

    def encode(texts: list[str]) -> np.ndarray:
        sizes.append(len(texts))
        time.sleep(0.02)  # a model call takes a while; callers pile up meanwhile
        return np.array([[float(t.split()[-1])] for t in texts])

    batcher = QueryBatcher(encode, max_batch=8)
    out: dict[int, float] = {}

    def call(i: int) -> None:
        out[i] = float(batcher(f"query {i}")[0])

    threads = [threading.Thread(target=call, args=(i,)) for i in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert out == {i: float(i) for i in range(40)}
    assert sum(sizes) == 40 and max(sizes) <= 8 and len(sizes) < 40


def test_an_encoder_error_reaches_every_waiter_and_the_batcher_recovers():
    fail = threading.Event()
    fail.set()

    def encode(texts: list[str]) -> np.ndarray:
        time.sleep(0.01)
        if fail.is_set():
            raise RuntimeError("model broke")
        return np.ones((len(texts), 2))

    batcher = QueryBatcher(encode)
    errors: list[BaseException] = []

    def call() -> None:
        try:
            batcher("q")
        except RuntimeError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=call) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert len(errors) == 10
    fail.clear()
    assert batcher("again").shape == (2,)
