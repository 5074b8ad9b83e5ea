"""Training-data checks: every bad-data case is reported with its line, and the split is seeded and disjoint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from citeline.lora.data import DataIssue, check_data, split_examples
from tests.conftest import REPO

pytestmark = pytest.mark.unit

EXAMPLE = REPO / "examples" / "adapters" / "support" / "train.jsonl"
TOPICS = ["returns", "warranty", "batteries", "firmware", "docks", "grippers", "invoices", "refunds", "parking",
          "printers", "wifi", "holidays", "deploys", "incidents"]


def chat(i: int, *, system: bool = True) -> dict:
    topic = TOPICS[i % len(TOPICS)]
    messages = [{"role": "system", "content": "Answer in bullets."}] if system else []
    return {"messages": [*messages, {"role": "user", "content": f"Question {i}: what is the policy on {topic} "
                                     f"for case number {i * 7919} in region {i % 5}?"},
                         {"role": "assistant", "content": f"- The {topic} rule {i} applies to case {i * 7919} [1].\n"
                                                          f"Next step: read section {i} of the {topic} page."}]}


def write(tmp_path: Path, rows: list, name: str = "data.jsonl") -> Path:
    path = tmp_path / name
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def only(report, kind: DataIssue) -> list:
    return [p for p in report.problems if p.kind == kind]


def test_good_data_passes_and_reports_lengths(tmp_path):
    report = check_data(write(tmp_path, [chat(i) for i in range(20)]))
    assert report.ok, report.summary()
    assert len(report.examples) == 20 and report.lines == 20
    assert len(report.split.train) + len(report.split.heldout) == 20 and len(report.split.heldout) == 2
    assert sum(n for _, _, n in report.histogram) == 20
    assert report.as_dict()["ok"] is True


def test_prompt_completion_lines_are_read_as_user_and_assistant(tmp_path):
    rows = [{"prompt": c["messages"][1]["content"], "completion": c["messages"][2]["content"]}
            for c in (chat(i) for i in range(10))]
    report = check_data(write(tmp_path, rows))
    assert report.ok, report.summary()
    assert [m.role for m in report.examples[0].messages] == ["user", "assistant"]


def test_malformed_json_names_the_line(tmp_path):
    rows = [chat(i) for i in range(10)]
    rows.insert(3, '{"messages": [{"role": "user", "content": "hi"}')
    report = check_data(write(tmp_path, rows))
    assert not report.ok
    [problem] = only(report, DataIssue.MALFORMED_JSON)
    assert problem.line == 4 and "not valid JSON" in problem.message


@pytest.mark.parametrize(("row", "fragment"), [
    (["a list"], "expected a JSON object"),
    ({"text": "no known keys"}, 'no "messages"'),
    ({"messages": "not a list"}, '"messages" must be a list'),
    ({"messages": [{"role": "robot", "content": "x"}]}, "role must be one of"),
    ({"messages": [{"role": "user", "content": 3}]}, "content must be a string"),
    ({"prompt": "only a prompt"}, '"completion" is missing'),
    ({"messages": [], "prompt": "p", "completion": "c"}, "not both"),
])
def test_schema_errors_name_the_line(tmp_path, row, fragment):
    rows = [chat(i) for i in range(10)]
    rows.insert(5, row)
    report = check_data(write(tmp_path, rows))
    [problem] = only(report, DataIssue.SCHEMA)
    assert problem.line == 6
    assert fragment in problem.message


@pytest.mark.parametrize(("roles", "fragment"), [
    (["user", "user", "assistant"], "message 2 is 'user'"),
    (["assistant", "user", "assistant"], "message 1 is 'assistant'"),
    (["user", "system", "assistant"], "only first"),
    (["system", "user"], "last message must be the assistant"),
    (["user", "assistant", "user"], "last message must be the assistant"),
])
def test_role_order(tmp_path, roles, fragment):
    bad = {"messages": [{"role": r, "content": f"turn {i} text"} for i, r in enumerate(roles)]}
    report = check_data(write(tmp_path, [*[chat(i) for i in range(10)], bad]))
    [problem] = only(report, DataIssue.ROLE_ORDER)
    assert problem.line == 11 and fragment in problem.message


def test_empty_examples(tmp_path):
    empty_reply = chat(50)
    empty_reply["messages"][-1]["content"] = "   "
    rows = [*[chat(i) for i in range(10)], {"messages": []}, empty_reply, {"prompt": "", "completion": "x"}]
    report = check_data(write(tmp_path, rows))
    assert [p.line for p in only(report, DataIssue.EMPTY)] == [11, 12, 13]
    assert "message 3 (assistant) is empty" in only(report, DataIssue.EMPTY)[1].message


def test_blank_lines_are_skipped_but_line_numbers_stay_true(tmp_path):
    path = tmp_path / "gaps.jsonl"
    path.write_text("\n".join(json.dumps(chat(i)) for i in range(10)) + "\n\n\n" + "{bad\n")
    [problem] = check_data(path).problems
    assert problem.line == 13


def test_overlong_examples_use_the_given_counter(tmp_path):
    long = chat(60)
    long["messages"][-1]["content"] = "word " * 300
    report = check_data(write(tmp_path, [*[chat(i) for i in range(10)], long]), max_tokens=200)
    [problem] = only(report, DataIssue.OVERLONG)
    assert problem.line == 11 and "over the limit of 200" in problem.message
    assert report.token_counts[11] > 200
    counted = check_data(write(tmp_path, [chat(i) for i in range(10)], "b.jsonl"), count_tokens=lambda m: 999, max_tokens=500)
    assert len(only(counted, DataIssue.OVERLONG)) == 10


def test_exact_duplicates_ignore_case_and_spacing_and_system_prompt(tmp_path):
    twin = chat(2, system=False)
    twin["messages"][0]["content"] = "  " + twin["messages"][0]["content"].upper()
    report = check_data(write(tmp_path, [*[chat(i) for i in range(10)], twin]))
    [problem] = only(report, DataIssue.DUPLICATE)
    assert problem.line == 11 and "line 3" in problem.message
    assert not only(report, DataIssue.NEAR_DUPLICATE)


def test_near_duplicates(tmp_path):
    rows = [chat(i) for i in range(10)]
    rows[4]["messages"][-1]["content"] += "\n" + " ".join(f"detail{k}" for k in range(40))
    near = json.loads(json.dumps(rows[4]))
    near["messages"][-1]["content"] = near["messages"][-1]["content"].replace("read section", "see section")
    report = check_data(write(tmp_path, [*rows, near]))
    [problem] = only(report, DataIssue.NEAR_DUPLICATE)
    assert problem.line == 11 and "line 5" in problem.message
    assert 11 not in {e.line for e in report.examples}  # left out of the split


def test_too_few_examples(tmp_path):
    report = check_data(write(tmp_path, [chat(i) for i in range(3)]))
    [problem] = report.problems
    assert problem.kind == DataIssue.TOO_FEW and problem.line is None


def test_split_is_seeded_deterministic_and_disjoint(tmp_path):
    path = write(tmp_path, [chat(i) for i in range(40)])
    a, b = check_data(path, heldout=0.25, seed=1), check_data(path, heldout=0.25, seed=1)
    assert [e.line for e in a.split.heldout] == [e.line for e in b.split.heldout]
    held, train = {e.line for e in a.split.heldout}, {e.line for e in a.split.train}
    assert len(held) == 10 and not held & train and held | train == set(range(1, 41))
    other = check_data(path, heldout=0.25, seed=2)
    assert {e.line for e in other.split.heldout} != held
    # the split depends on the examples, not on the order they were passed in
    shuffled = split_examples(list(reversed(a.examples)), heldout=0.25, seed=1)
    assert {e.line for e in shuffled.heldout} == held


def test_the_shipped_example_dataset_is_clean():
    report = check_data(EXAMPLE, max_tokens=1024)
    assert report.ok, report.summary()
    assert len(report.examples) >= 100
