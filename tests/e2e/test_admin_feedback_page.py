"""The admin page's Feedback tab (issue 19, item 1) in a real headless Chromium against a real ``citeline serve``.

Users rate their own answers the only way they can (``POST /v1/feedback``, as the asker); the admin page shows
the summary per team and adapter version (which version users rate worse) and the latest rows, narrows them by
team and rating, shows a hostile correction as text, and opens an answer's replay. Screenshots at 1280x800 and
390x844 go to ``$CITELINE_TEST_ARTIFACTS`` (``admin-feedback-*.png``).
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.e2e.test_admin_page import (  # noqa: F401 (browser: the module's Chromium fixture)
    DESKTOP,
    PHONE,
    admin_page,
    api,
    assert_inert,
    browser,
    click,
    find,
    find_all,
    fits,
    row,
    rows,
    screenshot,
    severe_errors,
    show,
    wait,
)

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

EVIL = "<img src=x onerror=\"window.__pwned='correction'\"> <script>window.__pwned='feedback'</script> use <b>v2</b>"
EVIL_REASON = "<iframe src=javascript:window.__pwned='reason'></iframe>"
V2 = "engineering-v2-0123abcd"  # an adapter version's served name (the extractive backend serves one model)


def _ask_and_rate(server, user: str, question: str, **feedback: Any) -> dict[str, Any]:
    answer = api(server, "POST", "/v1/ask", key=user, json={"question": question})
    assert answer.status_code == 200, answer.text
    r = api(server, "POST", "/v1/feedback", key=user, json={"audit_id": answer.json()["audit_id"], **feedback})
    assert r.status_code == 200, r.text
    return {**r.json(), "question": question}


@pytest.fixture(scope="module")
def rated(server) -> dict[str, dict[str, Any]]:
    """alice (engineering) rates three answers, one of them as if adapter v2 had answered; bob (sales) one."""
    out = {"down": _ask_and_rate(server, "alice", "how do I roll back a bad deploy", rating="down",
                                 reason=EVIL_REASON, correction=EVIL),
           "v2": _ask_and_rate(server, "alice", "who approves a rollback", rating="up", reason="clear"),
           "up": _ask_and_rate(server, "alice", "how do I restart the payments service", rating="up"),
           "bob": _ask_and_rate(server, "bob", "when is the office closed", rating="up")}
    server.owner_sql("UPDATE feedback SET model = %s WHERE audit_id = %s", V2, out["v2"]["audit_id"])
    return out


def feedback_rows(driver) -> list[str]:
    return [r.get_attribute("data-audit") for r in find_all(driver, "#feedback-table tbody tr")]


def test_the_feedback_tab_shows_the_summary_per_adapter_version_and_the_rows_as_text(browser, server,  # noqa: F811
                                                                                    rated):
    admin_page(browser, server)
    show(browser, "feedback")
    base = rated["up"]["model"]
    engineering = {r.get_attribute("data-model"): r for r in rows(browser, "feedback-summary", 3)
                   if r.get_attribute("data-team") == "engineering"}
    assert set(engineering) == {base, V2}, set(engineering)
    worse = engineering[base]
    assert [worse.find_element("css selector", f".{c}").text for c in ("up", "down", "corrected")] == ["1", "1", "1"]
    assert worse.find_element("css selector", ".share").text == "50% \u221250 pts vs the team's best"
    assert engineering[V2].find_element("css selector", ".share").text == "100% best"
    sales = next(r for r in rows(browser, "feedback-summary") if r.get_attribute("data-team") == "sales")
    assert sales.find_element("css selector", ".share").text == "100%"  # one model: nothing to compare

    listed = [str(rated[k]["audit_id"]) for k in ("bob", "up", "v2", "down")]  # newest first
    wait(browser, lambda d: feedback_rows(d) == listed, "the latest feedback rows are not listed newest first")
    down = row(browser, "feedback", "audit", listed[-1])
    assert down.find_element("css selector", ".correction").text == EVIL  # the markup, as text
    assert down.find_element("css selector", ".reason").text == EVIL_REASON
    assert down.find_element("css selector", ".question").text == rated["down"]["question"]
    assert (down.find_element("css selector", ".asker").text, down.find_element("css selector", ".rating").text) == (
        "alice", "down")
    assert "&lt;script&gt;" in browser.execute_script("return document.getElementById('feedback-table').innerHTML")
    assert_inert(browser)
    assert severe_errors(browser) == []
    assert not find_all(browser, "#view-feedback form button.rate, #view-feedback [data-rate]")  # shown, not given
    for size, label in ((DESKTOP, "desktop"), (PHONE, "phone")):
        browser.set_window_size(*size)
        show(browser, "feedback")
        wait(browser, lambda d: len(feedback_rows(d)) == 4, "the rows did not come back")
        assert fits(browser), f"the feedback view scrolls sideways at {size}"
        assert_inert(browser)
        shot = screenshot(browser, f"admin-feedback-{label}.png")
        assert shot.stat().st_size > 5_000, shot
        browser.execute_script("arguments[0].scrollIntoView({block: 'center'})",
                               row(browser, "feedback", "audit", listed[-1]))
        screenshot(browser, f"admin-feedback-rows-{label}.png")
    browser.set_window_size(*DESKTOP)


def test_the_filters_narrow_the_rows_and_an_answer_replays(browser, server, rated):  # noqa: F811
    from selenium.webdriver.support.ui import Select

    admin_page(browser, server)
    show(browser, "feedback")
    wait(browser, lambda d: len(feedback_rows(d)) == 4, "the feedback rows are not shown")
    rating = Select(find(browser, "#f-rating"))
    rating.select_by_value("down")
    find(browser, "#feedback-form button[type=submit]").click()
    wait(browser, lambda d: feedback_rows(d) == [str(rated["down"]["audit_id"])], "the rating filter did not narrow")
    assert {c.text for c in find_all(browser, "#feedback-table td.rating")} == {"down"}
    screenshot(browser, "admin-feedback-filtered.png")

    rating.select_by_value("")
    find(browser, "#f-team").send_keys("sales")
    find(browser, "#feedback-form button[type=submit]").click()
    wait(browser, lambda d: feedback_rows(d) == [str(rated["bob"]["audit_id"])], "the team filter did not narrow")
    assert {r.get_attribute("data-team") for r in rows(browser, "feedback-summary")} == {"sales"}
    find(browser, "#f-team").clear()
    find(browser, "#f-team").send_keys("nobody")
    find(browser, "#feedback-form button[type=submit]").click()
    wait(browser, lambda d: find(d, "#feedback-empty").is_displayed() and not feedback_rows(d), "no empty state")

    find(browser, "#f-team").clear()
    find(browser, "#feedback-form button[type=submit]").click()
    audit_id = str(rated["down"]["audit_id"])
    click(browser, lambda d: row(d, "feedback", "audit", audit_id).find_element("css selector", "button.replay"),
          "no replay button on the feedback row")
    wait(browser, lambda d: find(d, "#view-audit").is_displayed() and f"#{audit_id}" in find(d, "#replay").text,
         "the answer's replay was not shown")
    assert "how do I roll back a bad deploy" in find(browser, "#replay").text
    replays = api(server, "GET", "/v1/admin/audit?action=audit.replay&limit=1").json()["rows"]
    assert replays and replays[0]["principal"].startswith("ops")  # the replay is audited (the listing is not)
    assert_inert(browser)
