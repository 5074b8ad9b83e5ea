"""Feedback from the chat page in a real headless Chromium against a real ``citeline serve``: thumbs down, a
reason and a correction land in the database against the answer's audit row, as the asker."""

from __future__ import annotations

import re

import pytest

from tests.e2e.test_chat_page import DEPLOY, ask, browser, find, logged_in, wait  # noqa: F401 - browser: a fixture

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_a_down_vote_with_a_correction_is_stored_against_the_answer(browser, server):  # noqa: F811
    logged_in(browser, server, server.keys["alice"])
    assert not find(browser, "#feedback").is_displayed()
    ask(browser, DEPLOY)
    audit_id = int(re.search(r"audit #(\d+)", find(browser, "#meta").text).group(1))
    assert find(browser, "#feedback").is_displayed() and not find(browser, "#fb-more").is_displayed()
    find(browser, "#fb-down").click()
    assert find(browser, "#fb-down").get_attribute("aria-pressed") == "true"
    find(browser, "#fb-reason").send_keys("<b>too vague</b>")
    find(browser, "#fb-correction").send_keys("Run `ship rollback` [1].")
    find(browser, "#fb-send").click()
    wait(browser, lambda d: "saved" in find(d, "#fb-status").text, "the feedback was not saved")
    rows = server.owner_sql("SELECT audit_id, principal, rating, reason, correction FROM feedback")
    assert rows == [(audit_id, "alice", -1, "<b>too vague</b>", "Run `ship rollback` [1].")]
    ask(browser, DEPLOY)  # a new answer starts with a fresh form
    assert find(browser, "#feedback").is_displayed() and not find(browser, "#fb-more").is_displayed()
    assert find(browser, "#fb-down").get_attribute("aria-pressed") == "false"
