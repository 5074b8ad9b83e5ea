"""Verifying a streamed answer: :class:`SentenceGate` holds the text until a sentence is complete, judges it
with the same rules as :func:`citeline.answers.verification.verify_text`, and releases it only then.

A client never receives a sentence the final answer drops. Under ``fallback`` no sentence is released
until one that addresses the question is, and a stream whose sentences were all dropped sends the
extractive answer; sentences already released are never taken back.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from citeline.answers.sentences import Segment, split_sentences
from citeline.answers.verification import (
    REFUSAL,
    Unsupported,
    Verification,
    cited_numbers,
    cited_text,
    is_refusal,
    judge_segments,
    rendered,
    states_something,
    unsupported_of,
    verify_text,
)
from citeline.contracts.verifier import Verifier

__all__ = ["SentenceGate", "stream_through"]


@dataclass
class SentenceGate:
    """Holds a stream's text until a sentence is complete, judges it, then releases it (or not).

    ``feed(delta)`` returns what may be sent now; ``close()`` returns the rest (and, under ``fallback``,
    the extractive answer when nothing survived). :attr:`result` is the :class:`Verification` of exactly
    what was released.
    """

    question: str
    evidence: Sequence[Any]
    verifier: Verifier
    policy: str
    repair: bool = True
    fallback: Callable[[], str] | None = None
    relevant: Callable[[Sequence[str]], bool] | None = None
    _on_topic: bool = False
    _buf: str = ""
    _released: list[str] = field(default_factory=list)
    _bad: list[Unsupported] = field(default_factory=list)
    _stating: int = 0
    _supported: int = 0
    _repaired: int = 0
    _ms: float = 0.0
    _fell_back: bool = False
    _said: set[str] = field(default_factory=set)
    _pending: str = ""
    result: Verification | None = None
    _OPEN: ClassVar[re.Pattern[str]] = re.compile(r"\[[\d,\s]{0,12}$")

    def feed(self, delta: str) -> str:
        self._buf += delta
        if self.policy == "off":
            out, self._buf = self._buf, ""
            self._released.append(out)
            return out
        if self._OPEN.search(self._buf):
            return ""  # a citation marker is still arriving: it belongs to the sentence before it
        segments = split_sentences(self._buf)
        if self._buf.endswith("\n"):
            done, self._buf = segments, ""
        else:  # the last segment may still grow; everything before it is complete
            done, self._buf = segments[:-1], segments[-1].raw if segments else ""
        return self._release(done)

    @property
    def stating(self) -> int:
        """Sentences judged so far that state something."""
        return self._stating

    @property
    def supported(self) -> int:
        return self._supported

    def _release(self, segments: Sequence[Segment]) -> str:
        if not segments:
            return ""
        t0 = time.perf_counter()
        judged = judge_segments(segments, self.question, self.evidence, self.verifier, self.repair, self._said)
        if self.policy == "fallback" and self.relevant is not None:
            for j in judged:  # until one sentence addresses the question, a supported one beside it waits out
                if self._on_topic or not (j.stating and j.supported):
                    continue
                if self.relevant([cited_text(j)]):
                    self._on_topic = True
                else:
                    j.supported, j.reason = False, "supported, but it does not address the question"
        self._stating += sum(j.stating for j in judged)
        self._supported += sum(j.stating and j.supported for j in judged)
        self._repaired += sum(j.repaired is not None and j.supported for j in judged)
        self._bad.extend(unsupported_of(judged))
        # lead-ins and fragments ("Here is how:") wait for the claim they introduce: one that is never
        # released (dropped, or the fallback instead) takes them with it
        out = ""
        for j in judged:
            text = rendered(j, self.policy)
            if text is None:
                continue
            if not j.stating and not is_refusal(j.segment.text):
                self._pending += text
                continue
            out += self._pending + text
            self._pending = ""
        self._ms += (time.perf_counter() - t0) * 1000
        if not "".join(self._released).strip():
            out = out.lstrip()
        self._released.append(out)
        return out

    def close(self) -> str:
        tail = ""
        if self._buf:
            if self.policy == "off":
                tail, self._buf = self._buf, ""
                self._released.append(tail)
            else:
                buf, self._buf = self._buf, ""
                tail = self._release(split_sentences(buf))
        text = "".join(self._released)
        if self.policy != "off" and not is_refusal(text) and not any(
                states_something(s.text, self.question) for s in split_sentences(text)):
            # nothing that states something survived: the fallback (or the refusal) instead
            alt = REFUSAL
            if self.policy == "fallback" and self.fallback is not None:
                self._fell_back = True
                v = verify_text(self.fallback(), question=self.question, evidence=self.evidence,
                                verifier=self.verifier, policy="drop", repair=self.repair)
                alt = v.text
            extra = alt if not text.strip() else "\n\n" + alt
            tail += extra
            self._released.append(extra)
            text += extra
        if self.policy != "off":
            tail = tail.rstrip() if tail.strip() else tail
        final = "".join(self._released).strip() if self.policy != "off" else text
        verified = self.policy != "off" and (self.policy != "flag" or not self._bad)
        self.result = Verification(final, self.policy, verified,
                                   tuple(self._bad), self._stating, self._supported, self._repaired, self._fell_back,
                                   cited_numbers(final, len(self.evidence)), self._ms)
        return tail


def stream_through(gate: SentenceGate, deltas: Iterator[str]) -> Iterator[str]:
    for delta in deltas:
        out = gate.feed(delta)
        if out:
            yield out
    tail = gate.close()
    if tail:
        yield tail
