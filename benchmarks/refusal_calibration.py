"""Calibrate the refusal threshold (``answer.min_score``) on labelled questions about the Acme example.

    python benchmarks/refusal_calibration.py

Each question is asked as a principal; it is *answerable* when a document that principal may see holds
the answer, *unanswerable* when none does (off-topic questions, and questions whose only answer is in a
document the principal may not see). The refusal score is the one :class:`citeline.answers.assistant.Assistant`
uses: the best cosine similarity of a visible retrieved chunk. For every candidate threshold the script
counts correct refusals and wrongly refused answerable questions, and prints the threshold with the best
balanced accuracy together with the whole curve.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import uuid
from pathlib import Path

import numpy as np
import psycopg
from _common import REPO, database_url, git_revision, machine
from psycopg import sql

from citeline.answers.assistant import best_similarity
from citeline.domain import SearchMode
from citeline.facade import Citeline
from citeline.settings import Settings

ANSWERABLE = [
    ("alice", "how do I roll back a bad deploy"), ("alice", "what are the severity levels for incidents"),
    ("alice", "who declares an incident"), ("alice", "how does the Fleet API authenticate clients"),
    ("alice", "why does the Scout stop in the middle of a mission"), ("alice", "how are firmware releases shipped"),
    ("bob", "what is the return policy"), ("bob", "how long does the battery last"),
    ("bob", "does the robot need an internet connection"), ("bob", "how do I update the firmware"),
    ("bob", "how much does the Atlas A6 arm cost"), ("bob", "what does the vacuum gripper handle"),
    ("bob", "what happens in my first week"), ("bob", "how many holidays do I get"),
    ("bob", "how do I set up the office printer"), ("bob", "how do I clear a paper jam"),
    ("bob", "how long do refunds take"), ("bob", "what does the warranty cover"),
    ("carol", "what are the salary bands for engineers"), ("carol", "how much parental leave do primary carers get"),
    ("carol", "when does the reorganisation take effect"), ("alice", "which robot is right for a cold store"),
    ("bob", "can I return a robot after 30 days"), ("alice", "what tools do we use"),
]
UNANSWERABLE = [
    ("alice", "what is the capital of Mongolia"), ("bob", "who won the 1966 world cup"),
    ("alice", "how do I bake sourdough bread"), ("bob", "what is the boiling point of ethanol"),
    ("carol", "how do I change a car tyre"), ("alice", "what is the population of Canada"),
    ("bob", "recommend a good science fiction novel"), ("alice", "how do I learn to play the violin"),
    ("bob", "what is the weather tomorrow in Leeds"), ("carol", "explain quantum entanglement"),
    # answers exist, but only in documents this principal may not see
    ("bob", "what are the salary bands for engineers"), ("bob", "how much parental leave do primary carers get"),
    ("alice", "when does the reorganisation take effect"), ("bob", "what are the incident severity levels"),
    ("bob", "how do I roll back a bad deploy"), ("alice", "what is the E3 senior engineer salary band"),
]


def main() -> None:
    url = database_url()
    tmp = Path(tempfile.mkdtemp(prefix="citeline-calib-"))
    root = tmp / "acme"
    shutil.copytree(REPO / "examples" / "acme", root, ignore=shutil.ignore_patterns(".citeline"))
    namespace = f"calib_{uuid.uuid4().hex[:8]}"
    settings = Settings.load(root / "citeline.toml", database_url=url, database={"namespace": namespace})
    scores: list[tuple[str, str, bool, float]] = []
    try:
        with Citeline(settings) as cl:
            cl.sync()
            cl.admin.import_principals(root / "principals.toml", actor="calibration")
            for label, items in ((True, ANSWERABLE), (False, UNANSWERABLE)):
                for user, q in items:
                    hits = cl.search(q, user=user, k=cl.settings.answer.evidence_k, mode=SearchMode.HYBRID).hits
                    scores.append((user, q, label, best_similarity(hits) or -1.0))
    finally:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(namespace)))
        shutil.rmtree(tmp, ignore_errors=True)
    pos = np.array([s for *_, lab, s in scores if lab])
    neg = np.array([s for *_, lab, s in scores if not lab])
    curve = []
    for t in np.round(np.arange(0.20, 0.60, 0.025), 3):
        answered = float((pos >= t).mean())
        refused = float((neg < t).mean())
        curve.append({"threshold": float(t), "answerable_answered": round(answered, 3),
                      "unanswerable_refused": round(refused, 3), "balanced_accuracy": round((answered + refused) / 2, 3)})
    best = max(curve, key=lambda c: (c["balanced_accuracy"], -abs(c["threshold"] - 0.35)))
    print(json.dumps({"benchmark": "refusal_calibration", "answerable": len(pos), "unanswerable": len(neg),
                      "best": best, "curve": curve,
                      "scores": [{"user": u, "question": q, "answerable": lab, "score": round(s, 4)}
                                 for u, q, lab, s in scores],
                      "machine": machine(), "revision": git_revision()}, indent=2))


if __name__ == "__main__":
    main()
