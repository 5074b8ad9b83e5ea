"""The admin page at ``/admin`` in a real headless Chromium (Selenium) against a real ``citeline serve``.

The server is the Acme example (real PostgreSQL, real embedder, real sync runs); the page only calls the admin
API. Needs Debian's ``chromium`` and ``chromium-driver`` like the chat page's test (``bash
deploy/system-deps.sh``); without them these tests fail, they do not skip. Screenshots of every view at
1280x800 and at a phone's 390x844 go to ``$CITELINE_TEST_ARTIFACTS`` (default ``tests/artifacts/``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.test_oidc import app, ports, provider  # noqa: F401 (fixtures: a real OIDC provider and app)
from tests.support.browser import WAIT, chromium, find, find_all, screenshot

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

VIEWS = ("sources", "principals", "keys", "adapters", "audit", "viewas")
DESKTOP, PHONE = (1280, 800), (390, 844)
# hostile names: no spaces (a principal's name may have none), still markup if it were ever parsed
EVIL_USER = "<img/src=x/onerror=window.__pwned='principal'>"
EVIL_GROUP = "<script>window.__pwned='group'</script>"
EVIL_LABEL = "<img src=x onerror=\"window.__pwned='label'\"> label"
EVIL_PAGE = """---
title: Parking permits <img src=x onerror="window.__pwned='title'"> <b>now</b>
---
# Parking permits

Parking permits for the visitor car park are issued by reception <script>window.__pwned='script'</script>
on the ground floor; a parking permit is valid for one year.
"""


@pytest.fixture(scope="module")
def browser() -> Iterator:
    with chromium("the admin page tests", size=DESKTOP, log="chromedriver-admin.log") as driver:
        yield driver


@pytest.fixture(scope="module")
def adapter(server, smollm2_dir: Path, embedder, tmp_path_factory) -> str:
    """A real adapter registered in the server's registry, with evaluation numbers against the baseline."""
    from citeline.facade import Citeline
    from tests.support.adapters import make_adapter, with_metrics

    tmp = tmp_path_factory.mktemp("adapters")
    settings = server.settings()
    settings = settings.model_copy(update={"adapters": settings.adapters.model_copy(
        update={"base_model_path": smollm2_dir, "store": tmp / "store"})})
    folder = with_metrics(make_adapter(smollm2_dir, tmp / "support-v1", seed=1), smollm2_dir,
                          format_compliance=0.92, baseline_format_compliance=0.71)
    with Citeline(settings, embedder=embedder) as cl:
        return cl.adapters.register(folder, team="support", actor="test").served_name


# -- helpers --------------------------------------------------------------------------------------------
def wait(driver, condition, message: str, timeout: float = WAIT):
    """Until ``condition`` holds; a view redrawn under the check (a stale element) is checked again."""
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException, TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.1,
                             ignored_exceptions=(StaleElementReferenceException, NoSuchElementException, LookupError)
                             ).until(lambda d: condition(d), message)
    except TimeoutException:  # what the page showed instead, kept with the other artifacts
        screenshot(driver, "admin-failure.png")
        shown = driver.execute_script("return document.body ? document.body.innerText : ''")
        raise AssertionError(f"{message}; the page at {driver.current_url} shows:\n{shown[:1500]}") from None


def api(server, method: str, path: str, key: str = "admin", **kwargs) -> httpx.Response:
    return httpx.request(method, server.url + path, headers={"Authorization": f"Bearer {server.keys[key]}"},
                         timeout=120, **kwargs)


def open_page(driver, server, size: tuple[int, int] = DESKTOP) -> None:
    """The page, signed out (nothing in session storage)."""
    driver.set_window_size(*size)
    # storage is cleared on a page of the same origin that runs no script (a sign-in still in flight on /admin
    # could store its key again after the clear)
    driver.get(server.url + "/admin/admin.css")
    driver.execute_script("sessionStorage.clear()")
    driver.get(server.url + "/admin")
    wait(driver, lambda d: find(d, "#api-key").is_displayed(), "the sign-in form is not shown")


def sign_in(driver, server, key: str, size: tuple[int, int] = DESKTOP) -> None:
    open_page(driver, server, size)
    find(driver, "#api-key").send_keys(key)
    find(driver, "#login").click()


def admin_page(driver, server, size: tuple[int, int] = DESKTOP) -> None:
    sign_in(driver, server, server.keys["admin"], size)
    wait(driver, lambda d: find(d, "#admin-view").is_displayed(), "an admin key did not open the admin page")
    driver.execute_script("window.confirm = () => true")  # the page asks before destructive actions


def show(driver, view: str) -> None:
    find(driver, f'#tabs button[data-view="{view}"]').click()
    wait(driver, lambda d: find(d, f"#view-{view}").is_displayed(), f"the {view} view did not open")


def rows(driver, table: str, min_rows: int = 1) -> list:
    wait(driver, lambda d: len(find_all(d, f"#{table}-table tbody tr")) >= min_rows, f"the {table} table is empty")
    return find_all(driver, f"#{table}-table tbody tr")


def row(driver, table: str, attr: str, value: str):
    def found(d):
        return next((r for r in find_all(d, f"#{table}-table tbody tr") if r.get_attribute(f"data-{attr}") == value), None)

    return wait(driver, found, f"no row with {attr}={value!r} in the {table} table")


def click(driver, target, message: str) -> None:
    """Click what ``target(driver)`` finds; again if the view was redrawn under it (a stale element)."""
    wait(driver, lambda d: target(d).click() or True, message)


def notice(driver) -> str:
    return find(driver, "#notice").text.strip()


def assert_inert(driver) -> None:
    """Nothing the server sent became markup: no element the page does not build, no script ran."""
    foreign = driver.execute_script(
        "return Array.from(document.querySelectorAll('#admin-view img, #admin-view script, #admin-view b, "
        "#admin-view iframe, #admin-view [onerror]'), e => e.outerHTML)")
    assert foreign == [], foreign
    assert driver.execute_script("return window.__pwned === undefined")
    assert driver.execute_script("return document.querySelectorAll('script').length") == 1  # admin.js


def fits(driver) -> bool:
    return driver.execute_script("return document.documentElement.scrollWidth <= window.innerWidth + 1")


# -- tests ----------------------------------------------------------------------------------------------
def test_the_page_loads_nothing_from_elsewhere_and_never_parses_server_text(server):
    html = httpx.get(server.url + "/admin", timeout=30)
    assert html.status_code == 200 and "text/html" in html.headers["content-type"]
    script = httpx.get(server.url + "/admin/admin.js", timeout=30)
    style = httpx.get(server.url + "/admin/admin.css", timeout=30)
    assert script.headers["content-type"].startswith("text/javascript") and style.status_code == 200
    assert "script-src 'self'" in html.text and "unsafe-inline" not in html.text
    assert "<script>" not in html.text and "style=" not in html.text  # no inline script or style to allow
    for text in (html.text, script.text, style.text):
        for needle in ("http://", "https://", "@import", "innerHTML", "outerHTML", "insertAdjacentHTML",
                       "document.write", "eval(", "new Function"):
            assert needle not in text, needle
    # nothing else under static/ (or beside it) is reachable through the asset route
    for path in ("/admin/index.html", "/admin/..%2Fapi%2Fpage.py", "/admin/admin.html", "/admin/nope.js"):
        assert httpx.get(server.url + path, timeout=30).status_code == 404, path
    assert 'data-oidc="off"' in html.text  # no [auth.oidc] here: no identity-provider button


def test_a_bad_key_and_a_non_admin_key_get_a_clear_message_and_no_data(browser, server):
    sign_in(browser, server, "cl_aaaaaaaaaaaa_" + "x" * 43)
    wait(browser, lambda d: find(d, "#login-error").is_displayed(), "no error for a bad key")
    assert "not accepted" in find(browser, "#login-error").text

    browser.execute_script("performance.clearResourceTimings()")
    find(browser, "#api-key").clear()
    find(browser, "#api-key").send_keys(server.keys["bob"])
    find(browser, "#login").click()
    wait(browser, lambda d: "not as an admin" in find(d, "#login-error").text, "no 'not an admin' message for bob")
    assert "admin key" in find(browser, "#login-error").text
    assert not find(browser, "#admin-view").is_displayed() and not find(browser, "#logout").is_displayed()
    assert find_all(browser, "table.data tr") == []  # no data in the page at all
    asked = browser.execute_script(
        "return performance.getEntriesByType('resource').map(e => new URL(e.name).pathname)")
    assert asked == ["/v1/admin/principals"], asked  # one probe (answered 403), nothing else was requested
    assert browser.execute_script("return sessionStorage.length") == 0
    screenshot(browser, "admin-not-an-admin.png")
    # a stale admin key in session storage that no longer works: back to the form with the reason
    browser.execute_script("sessionStorage.setItem('citeline.adminKey', arguments[0])", server.keys["bob"])
    browser.refresh()
    wait(browser, lambda d: "not as an admin" in find(d, "#login-error").text, "a saved non-admin key got in")
    assert not find(browser, "#admin-view").is_displayed()


def test_every_view_loads_and_shows_the_data(browser, server, adapter):
    admin_page(browser, server)
    # sources: name, document count, last run, next run, failures -- as the API reports them
    listed = api(server, "GET", "/v1/admin/sources").json()
    for s in listed:
        r = row(browser, "sources", "source", s["name"])
        assert r.find_element("css selector", ".docs").text == str(s["documents"])
        assert s["last_run_status"] in r.find_element("css selector", ".last-run").text
        assert r.find_element("css selector", ".failures").text
        assert r.find_element("css selector", "button.sync").is_enabled()
    assert {s["name"] for s in listed} == {"wiki", "tickets", "catalog"}
    assert all(s["documents"] > 0 for s in listed)

    show(browser, "principals")
    users = {p["user"]: p for p in api(server, "GET", "/v1/admin/principals").json()}
    assert {"alice", "bob", "carol", "ops"} <= set(users)
    for user, p in users.items():
        r = row(browser, "principals", "user", user)
        assert [g.text for g in r.find_elements("css selector", ".groups .pill")] == p["groups"]

    show(browser, "keys")
    keys = api(server, "GET", "/v1/admin/keys").json()
    assert {r.get_attribute("data-key") for r in rows(browser, "keys", len(keys))} == {k["key_id"] for k in keys}
    assert "cl_" not in find(browser, "#keys-table").text  # ids only: no secret is ever listed

    show(browser, "adapters")
    r = row(browser, "adapters", "adapter", adapter)
    assert r.find_element("css selector", ".eval").text == "0.920 vs 0.710 +0.210"
    assert r.find_element("css selector", ".status").text == "registered"

    show(browser, "audit")
    audit = rows(browser, "audit", 5)
    assert audit[0].get_attribute("data-id") == str(api(server, "GET", "/v1/admin/audit?limit=1").json()
                                                     ["rows"][0]["id"])
    find(browser, "#a-action").send_keys("key.create")
    find(browser, "#audit-form button[type=submit]").click()
    wait(browser, lambda d: {c.text for c in find_all(d, "#audit-table td.action")} == {"key.create"},
         "the action filter did not narrow the audit view")
    assert len(rows(browser, "audit")) == 4  # alice, bob, carol, ops (the fixture's keys)
    find(browser, "#audit-verify").click()
    wait(browser, lambda d: "chain intact" in find(d, "#audit-verified").text, "no chain verification shown")
    assert severe_errors(browser) == []

    for size, label in ((DESKTOP, "desktop"), (PHONE, "phone")):
        browser.set_window_size(*size)
        for view in VIEWS:
            show(browser, view)
            assert fits(browser), f"the {view} view scrolls sideways at {size}"
            shot = screenshot(browser, f"admin-{view}-{label}.png")
            assert shot.stat().st_size > 5_000, shot
    browser.set_window_size(*DESKTOP)


def test_the_sync_button_runs_a_sync_and_the_status_updates(browser, server):
    before = {s["name"]: s for s in api(server, "GET", "/v1/admin/sources").json()}["wiki"]
    (server.config.parent / "wiki" / "parking.md").write_text(EVIL_PAGE, encoding="utf-8")
    admin_page(browser, server)
    click(browser, lambda d: row(d, "sources", "source", "wiki").find_element("css selector", "button.sync"),
          "no sync button for wiki")
    wait(browser, lambda d: "started (run" in notice(d) or "succeeded" in notice(d), "the sync did not start")
    wait(browser, lambda d: "succeeded" in notice(d), f"the sync did not finish ({notice(browser)!r})", timeout=180)
    assert "1 added" in notice(browser), notice(browser)
    after = {s["name"]: s for s in api(server, "GET", "/v1/admin/sources").json()}["wiki"]
    assert after["documents"] == before["documents"] + 1 and after["last_run_started"] != before["last_run_started"]
    wait(browser, lambda d: row(d, "sources", "source", "wiki").find_element("css selector", ".docs").text
         == str(after["documents"]), "the document count did not update")
    assert "succeeded" in row(browser, "sources", "source", "wiki").find_element("css selector", ".last-run").text
    assert row(browser, "sources", "source", "wiki").find_element("css selector", "button.sync").is_enabled()
    syncs = api(server, "GET", "/v1/admin/audit?action=source.sync&limit=1").json()["rows"]
    assert syncs and syncs[0]["payload"]["source"] == "wiki" and syncs[0]["principal"].startswith("ops")
    screenshot(browser, "admin-sources-synced.png")


def test_a_key_is_created_shown_once_and_revoked(browser, server):
    admin_page(browser, server)
    show(browser, "keys")
    find(browser, "#k-user").send_keys("carol")
    find(browser, "#k-label").send_keys(EVIL_LABEL)
    find(browser, "#k-create").click()
    wait(browser, lambda d: find(d, "#new-key").is_displayed(), "the new key was not shown")
    secret = find(browser, "#new-key-secret").text
    assert secret.startswith("cl_") and "shown only once" in find(browser, "#new-key").text
    key_id = next(k["key_id"] for k in api(server, "GET", "/v1/admin/keys").json()
                  if k["label"] == EVIL_LABEL)
    assert httpx.get(server.url + "/v1/models", headers={"Authorization": f"Bearer {secret}"}).status_code == 200
    new = row(browser, "keys", "key", key_id)
    assert new.find_element("css selector", ".user").text == "carol" and EVIL_LABEL.split(">")[0] in new.text
    assert_inert(browser)
    screenshot(browser, "admin-key-created.png")
    find(browser, "#new-key-done").click()
    assert secret not in browser.execute_script("return document.body.textContent")
    browser.refresh()  # the secret is gone for good: not in the page, not in storage
    wait(browser, lambda d: find(d, "#admin-view").is_displayed(), "a reload lost the sign-in")
    show(browser, "keys")
    browser.execute_script("window.confirm = () => true")
    assert secret not in browser.page_source
    assert secret not in browser.execute_script("return JSON.stringify(Object.entries(sessionStorage))")

    click(browser, lambda d: row(d, "keys", "key", key_id).find_element("css selector", "button.revoke"), "no revoke")
    wait(browser, lambda d: "revoked" in row(d, "keys", "key", key_id).find_element("css selector", ".state").text,
         "the key was not shown revoked")
    assert "revoked" in row(browser, "keys", "key", key_id).get_attribute("class")
    assert not row(browser, "keys", "key", key_id).find_elements("css selector", "button.revoke")
    assert httpx.get(server.url + "/v1/models", headers={"Authorization": f"Bearer {secret}"}).status_code == 401
    actions = [r["action"] for r in api(server, "GET", "/v1/admin/audit?kind=admin&limit=5").json()["rows"]]
    assert actions[:2] == ["key.revoke", "key.create"], actions


def test_a_principal_is_saved_from_the_form_and_a_bad_name_is_refused_with_the_reason(browser, server):
    admin_page(browser, server)
    show(browser, "principals")
    find(browser, "#p-user").send_keys("dave")
    find(browser, "#p-groups").send_keys(" staff , sales ,")
    find(browser, "#p-team").send_keys("sales")
    find(browser, "#principal-form button[type=submit]").click()
    wait(browser, lambda d: "Saved dave" in notice(d), f"the principal was not saved ({notice(browser)!r})")
    dave = row(browser, "principals", "user", "dave")
    assert [g.text for g in dave.find_elements("css selector", ".groups .pill")] == ["sales", "staff"]
    assert api(server, "GET", "/v1/admin/principals/dave").json() == {"user": "dave", "groups": ["sales", "staff"],
                                                                      "team": "sales"}
    find(browser, "#p-user").send_keys("two words")  # a name may not contain spaces: the API's reason is shown
    find(browser, "#principal-form button[type=submit]").click()
    wait(browser, lambda d: "Error" in notice(d) and "invalid user name" in notice(d), "no reason for a bad name")
    assert "two words" not in {p["user"] for p in api(server, "GET", "/v1/admin/principals").json()}

def test_view_as_shows_what_each_user_sees_and_a_past_answer_replays(browser, server):
    admin_page(browser, server)
    show(browser, "viewas")
    seen = {}
    for user in ("alice", "bob"):
        for field in ("#v-user", "#v-question"):
            find(browser, field).clear()
        find(browser, "#v-user").send_keys(user)
        find(browser, "#v-question").send_keys("how do I roll back a bad deploy")
        find(browser, "#viewas-form button[type=submit]").click()
        wait(browser, lambda d, u=user: f"Shown as {u}:" in notice(d), f"view as {user} showed nothing")
        seen[user] = [t.text for t in find_all(browser, "#viewas-results .title")]
        assert "impersonation" in notice(browser)
    assert "Deploy process" in seen["alice"] and "Deploy process" not in seen["bob"], seen
    rows_ = api(server, "GET", "/v1/admin/audit?action=impersonate&limit=2").json()["rows"]
    assert [(r["payload"]["as_user"], r["principal"].split(" ")[0]) for r in rows_] == [("bob", "ops"), ("alice", "ops")]
    screenshot(browser, "admin-view-as.png")

    asked = api(server, "POST", "/v1/ask", key="alice", json={"question": "how do I roll back a bad deploy"}).json()
    show(browser, "audit")
    find(browser, "#a-principal").send_keys("alice")
    find(browser, "#a-kind").send_keys("ask")
    find(browser, "#audit-form button[type=submit]").click()
    wait(browser, lambda d: find_all(d, f'#audit-table tr[data-id="{asked["audit_id"]}"] button.replay'),
         "alice's answer has no replay button")
    click(browser, lambda d: find(d, f'#audit-table tr[data-id="{asked["audit_id"]}"] button.replay'), "no replay")
    wait(browser, lambda d: find(d, "#replay").is_displayed(), "the replay was not shown")
    replay = find(browser, "#replay").text
    assert f"#{asked['audit_id']}" in replay and "still visible to the asker" in replay
    assert any(s["title"] in replay for s in asked["sources"])
    screenshot(browser, "admin-replay.png")


def test_hostile_names_and_titles_render_as_text(browser, server):
    assert api(server, "PUT", "/v1/admin/principals",
               json={"user": EVIL_USER, "groups": ["staff", EVIL_GROUP]}).status_code == 200
    admin_page(browser, server)
    show(browser, "principals")
    evil = row(browser, "principals", "user", EVIL_USER)
    assert evil.find_element("css selector", ".user").text == EVIL_USER
    assert EVIL_GROUP in [g.text for g in evil.find_elements("css selector", ".groups .pill")]
    assert_inert(browser)
    show(browser, "audit")
    wait(browser, lambda d: EVIL_USER in find(d, "#audit-table").text, "the principal's audit row is not shown")
    assert_inert(browser)

    show(browser, "viewas")  # a document whose title is markup (synced by the sync test, or here)
    if "parking.md" not in {h["external_id"] for h in api(server, "POST", "/v1/search", key="bob", json={
            "query": "parking permit", "k": 5}).json().get("hits", [])}:
        (server.config.parent / "wiki" / "parking.md").write_text(EVIL_PAGE, encoding="utf-8")
        run = api(server, "POST", "/v1/admin/sources/wiki/sync").json()
        wait(browser, lambda d: api(server, "GET", run["status_url"]).json()["status"] != "running", "no sync")
    find(browser, "#v-user").send_keys(EVIL_USER)
    find(browser, "#v-question").send_keys("where do I get a parking permit")
    find(browser, "#viewas-form button[type=submit]").click()
    wait(browser, lambda d: "Shown as" in notice(d), "view as the hostile principal showed nothing")
    titles = [t.text for t in find_all(browser, "#viewas-results .title")]
    assert any(t.startswith("Parking permits <img") for t in titles), titles
    assert "&lt;img" in browser.execute_script("return document.getElementById('viewas-results').innerHTML")
    assert_inert(browser)
    screenshot(browser, "admin-hostile-text.png")
    # the phone layout labels each cell with its column and still never parses the text
    browser.set_window_size(*PHONE)
    show(browser, "principals")
    assert fits(browser)
    assert_inert(browser)
    screenshot(browser, "admin-hostile-text-phone.png")
    browser.set_window_size(*DESKTOP)
    # deleted from the page (its name travels percent-encoded in the path)
    click(browser, lambda d: row(d, "principals", "user", EVIL_USER).find_element("css selector", "button.danger"),
          "no delete button")
    wait(browser, lambda d: f"Deleted {EVIL_USER}" in notice(d), f"the principal was not deleted ({notice(browser)!r})")
    assert EVIL_USER not in {p["user"] for p in api(server, "GET", "/v1/admin/principals").json()}
    assert EVIL_USER not in find(browser, "#principals-table").text


def test_signing_out_forgets_the_key(browser, server):
    admin_page(browser, server)
    assert browser.execute_script("return sessionStorage.getItem('citeline.adminKey')") == server.keys["admin"]
    find(browser, "#logout").click()
    wait(browser, lambda d: find(d, "#api-key").is_displayed(), "signing out did not show the sign-in form")
    assert browser.execute_script("return sessionStorage.length") == 0
    assert find_all(browser, "table.data tr") == []
    browser.refresh()
    wait(browser, lambda d: find(d, "#api-key").is_displayed(), "signed in again after signing out")


def test_the_admin_page_signs_in_through_the_identity_provider(browser, app, provider):  # noqa: F811 (fixtures)
    """With [auth.oidc] set (test_oidc's real provider and app): the page's button, the provider's form, back on
    /admin; an admin group's member gets the page, anyone else the 'not an admin' message and no data."""
    url, _ = app
    for user, admin in (("root", True), ("alice", False)):
        browser.delete_all_cookies()
        browser.set_window_size(*DESKTOP)
        browser.get(url + "/admin")
        browser.execute_script("sessionStorage.clear()")
        browser.get(url + "/admin")
        wait(browser, lambda d: find(d, "#oidc-login").is_displayed(), "the identity provider's button is not shown")
        find(browser, "#oidc-login").click()
        wait(browser, lambda d: find(d, "#login").is_displayed(), "the provider's form is not shown")
        find(browser, "#login").send_keys(user)
        find(browser, "#password").send_keys("pw")
        find(browser, "#submit").click()
        wait(browser, lambda d: d.current_url.startswith(url + "/admin"), "signing in did not come back to /admin")
        if admin:
            wait(browser, lambda d: find(d, "#admin-view").is_displayed(), "an admin group member got no admin page")
            assert find(browser, "#who").text == "signed in as root"
            assert {"eng", "sales"} <= {r.get_attribute("data-source") for r in rows(browser, "sources", 2)}
            screenshot(browser, "admin-oidc-signed-in.png")
            # a change with the session cookie alone (no key): the same-origin write the session allows
            click(browser, lambda d: row(d, "sources", "source", "eng").find_element("css selector", "button.sync"),
                  "no sync button for eng")
            wait(browser, lambda d: "succeeded" in notice(d), "a sync started from the signed-in page did not finish")
            assert not browser.execute_script("return sessionStorage.length")  # nothing but the HttpOnly cookie
        else:
            wait(browser, lambda d: "not as an admin" in find(d, "#login-error").text, "no 'not an admin' for alice")
            assert "Signed in as alice" in find(browser, "#login-error").text
            assert not find(browser, "#admin-view").is_displayed() and find_all(browser, "table.data tr") == []


def severe_errors(driver) -> list[str]:
    """Console errors other than the HTTP statuses the tests provoke on purpose (401 and 403 at sign-in)."""
    return [e["message"] for e in driver.get_log("browser")
            if e["level"] == "SEVERE" and "Failed to load resource" not in e["message"]]
