"""Training data from feedback without a database: prompts rebuilt exactly, exclusions, de-duplication, pairs,
drafts, and files that `citeline adapter train`'s check accepts."""

from __future__ import annotations

import json

import pytest

from citeline.answers.prompt import build_prompt
from citeline.domain import SearchHit
from citeline.lora.data import check_data, split_examples, word_token_counter
from citeline.lora.feedback_data import EvidenceChunk, RatedAnswer, build_feedback_data

pytestmark = pytest.mark.unit

TOPICS = ["returns", "warranty", "batteries", "firmware", "docks", "grippers", "invoices", "refunds", "parking",
          "printers", "wifi", "holidays", "deploys", "incidents", "badges", "laptops"]


def chunk(i: int) -> EvidenceChunk:
    t = TOPICS[i % len(TOPICS)]
    return EvidenceChunk(100 + i, 10 + i, f"{t.title()} policy", f"https://wiki/{t}",
                         f"The {t} policy, revision {i}: requests about {t} are handled by desk {i} within {i + 2} days.")


CHUNKS = {c.chunk_id: c for c in (chunk(i) for i in range(len(TOPICS)))}
ALL = frozenset(CHUNKS)


def rated(i: int, *, rating: int = 1, correction: str | None = None, answer: str | None = "default",
          chunks: tuple[int, ...] | None = None, question: str | None = None, **kw) -> RatedAnswer:
    t = TOPICS[i % len(TOPICS)]
    return RatedAnswer(
        audit_id=1000 + i, team="support", model="base", rating=rating, reason=kw.pop("reason", ""),
        correction=correction, question=question or f"How are {t} requests handled, case {i}?",
        answer=(f"Desk {i} handles {t} requests within {i + 2} days [1]." if answer == "default" else answer),
        chunk_ids=chunks if chunks is not None else (100 + i, 100 + (i + 1) % len(TOPICS)), **kw)


def test_the_prompt_is_the_one_the_assistant_built():
    a = rated(3)
    data = build_feedback_data("support", [a], CHUNKS, ALL)
    (example, meta), = data.examples
    hits = [SearchHit(c.chunk_id, c.document_id, "wiki", "x", c.title, c.url, c.text, None, None, 0.5)
            for c in (CHUNKS[i] for i in a.chunk_ids)]
    shown = build_prompt(a.question, hits, lambda s: len(s.split()), evidence_tokens=3000)  # as at answer time
    assert example.messages[:-1] == shown.messages
    assert example.messages[-1].role == "assistant" and example.messages[-1].content == a.answer
    assert meta == {"audit_id": 1003, "model": "base", "rating": "up", "target": "accepted"}


def test_corrections_win_down_votes_only_pair_and_every_exclusion_is_counted():
    answers = [rated(0), rated(1, rating=-1), rated(2, rating=-1, correction="Desk 2 handles battery requests [1]."),
               rated(4, history_turns=2), rated(5, chunks=(100 + 5, 999)), rated(6, chunks=(106,)),
               rated(7, answer=None), rated(8, rating=-1, answer=None, correction="Desk 8 takes parking [1].")]
    visible = ALL - {106}  # a member of the team no longer sees chunk 106
    data = build_feedback_data("support", answers, CHUNKS, visible)
    assert data.excluded == {"conversation": 1, "evidence_changed": 1, "evidence_not_visible": 1, "no_answer": 1}
    targets = [(m["audit_id"], m["target"]) for _, m in data.examples]
    assert targets == [(1002, "corrected"), (1008, "corrected"), (1000, "accepted")]  # corrections first
    assert all(m["audit_id"] != 1001 for _, m in data.examples)  # a down-vote without a correction teaches no SFT
    pairs = data.pairs_train + data.pairs_heldout
    assert [(p.chosen_from, p.rejected_from) for p in pairs] == [(1002, 1002)]
    assert pairs[0].chosen.startswith("Desk 2") and pairs[0].rejected == answers[2].answer


def test_a_team_without_members_gets_nothing():
    data = build_feedback_data("support", [rated(0), rated(1)], CHUNKS, ALL, members=0)
    assert data.examples == [] and data.excluded == {"evidence_not_visible": 2}


def test_answers_to_one_prompt_pair_every_chosen_with_every_rejected_and_split_by_prompt():
    q, shown = "Where do I return a gripper?", (100, 101)
    answers = [rated(0, question=q, chunks=shown, answer="Return it to desk 0 [1]."),
               rated(1, question=q, chunks=shown, rating=-1, answer="Throw it away."),
               rated(2, question=q, chunks=shown, rating=-1, answer="Ask someone."),
               rated(3, question=q.upper(), chunks=shown, rating=-1, answer="Throw it away.", correction="Desk 0 [1].")]
    answers += [rated(i, rating=-1, correction=f"Fixed answer {i} [1].") for i in range(5, 13)]
    data = build_feedback_data("support", answers, CHUNKS, ALL, heldout=0.25, seed=3)
    same = [p for p in data.pairs_train + data.pairs_heldout if p.prompt[-1].content.endswith(q)]
    assert {(p.chosen, p.rejected) for p in same} == {
        (c, r) for c in ("Desk 0 [1].", "Return it to desk 0 [1].") for r in ("Throw it away.", "Ask someone.")}
    assert len(same) == 4  # the duplicate rejected text of answer 3 adds no pair twice
    held_prompts = {p.prompt for p in data.pairs_heldout}
    assert held_prompts and not held_prompts & {p.prompt for p in data.pairs_train}
    line = data.pairs_train[0].as_json()
    assert [m["role"] for m in line["prompt"]] == ["system", "user"]
    assert line["chosen"][0]["role"] == line["rejected"][0]["role"] == "assistant"


def test_duplicates_are_dropped_as_check_data_would_and_the_file_trains(tmp_path):
    answers = [rated(i) for i in range(12)] + [rated(3), rated(4, question="How are FIRMWARE requests handled, case 4?")]
    data = build_feedback_data("support", answers, CHUNKS, ALL, heldout=0.2, seed=1)
    assert data.duplicates == 2 and len(data.examples) == 12
    files = data.write(tmp_path / "out")
    report = check_data(files["sft"], heldout=0.2, seed=1)
    assert report.ok, report.summary()
    lines = [json.loads(x) for x in files["sft"].read_text().splitlines()]
    assert [x["feedback"]["audit_id"] for x in lines] == [m["audit_id"] for _, m in data.examples]
    assert split_examples(report.examples, heldout=0.2, seed=1) == report.split


def test_overlong_examples_are_left_out_so_training_accepts_the_file(tmp_path):
    long = rated(0, correction="word " * 400)
    data = build_feedback_data("support", [long, *[rated(i) for i in range(1, 10)]], CHUNKS, ALL, max_tokens=200,
                               count_tokens=word_token_counter)
    assert data.excluded == {"overlong": 1} and len(data.examples) == 9
    assert check_data(data.write(tmp_path)["sft"], max_tokens=200).ok


def test_drafts_are_for_review_only(tmp_path):
    calls = []

    def drafter(prompt, answer, reason):
        calls.append((prompt[-1].content, answer, reason))
        return "  Desk 1 handles it within 3 days [1].  "

    answers = [rated(0), rated(1, rating=-1, reason="wrong desk"), rated(2, rating=-1, correction="Desk 2 [1].")]
    data = build_feedback_data("support", answers, CHUNKS, ALL, drafter=drafter)
    assert [c[1:] for c in calls] == [(answers[1].answer, "wrong desk")]
    assert "Question: How are warranty requests handled, case 1?" in calls[0][0]
    (draft,) = data.drafts
    assert draft["draft"] is True and draft["messages"][-1]["content"] == "Desk 1 handles it within 3 days [1]."
    files = data.write(tmp_path)
    assert "Desk 1 handles it within 3" not in files["sft"].read_text()  # never trained on unreviewed
    assert json.loads(files["drafts"].read_text())["feedback"]["rejected"] == answers[1].answer
