"""The chat page at ``/`` in a real headless Chromium (Selenium) against a real ``citeline serve``.

Needs Debian's ``chromium`` and ``chromium-driver`` (``bash deploy/system-deps.sh`` installs them);
without them these tests fail, they do not skip. A screenshot of the answered page is saved to
``$CITELINE_TEST_ARTIFACTS`` (default ``tests/artifacts/``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from citeline.answers.prompt import REFUSAL
from tests.support.browser import WAIT, chromium, find, find_all, screenshot

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

DEPLOY = "how do I roll back a bad deploy"
PRINTER = "how do I set up the office printer"
# the elements the page itself builds inside the answer and the sources panel; anything else is injected
ANSWER_TAGS = {"a", "span"}
SOURCES_TAGS = {"li", "div", "span", "a", "p"}


@pytest.fixture(scope="module")
def browser() -> Iterator:
    with chromium("the chat page tests", size=(1280, 1000), log="chromedriver.log") as driver:
        yield driver


# -- helpers --------------------------------------------------------------------------------------------
def wait(driver, condition, message: str, timeout: float = WAIT):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.1).until(lambda d: condition(d), message)


def open_page(driver, server) -> None:
    """The page, logged out (nothing in session storage)."""
    driver.set_window_size(1280, 1000)
    driver.get(server.url + "/")
    driver.execute_script("sessionStorage.clear()")
    driver.get(server.url + "/")
    wait(driver, lambda d: find(d, "#api-key").is_displayed(), "the login form is not shown")


def log_in(driver, key: str) -> None:
    field = find(driver, "#api-key")
    field.clear()
    field.send_keys(key)
    find(driver, "#login").click()


def logged_in(driver, server, key: str) -> None:
    open_page(driver, server)
    log_in(driver, key)
    wait(driver, lambda d: find(d, "#question").is_displayed(), "logging in did not show the question box")


def status(driver) -> str:
    return find(driver, "#status").text.strip()


def ask(driver, question: str, *, expect: str = "done") -> None:
    """Type the question and press Enter; wait until the stream finished (or failed)."""
    from selenium.webdriver.common.keys import Keys

    box = find(driver, "#question")
    box.clear()
    box.send_keys(question, Keys.ENTER)
    wait(driver, lambda d: status(d) == "done" or status(d).startswith("error"),
         f"no answer to {question!r} (status {status(driver)!r})")
    assert status(driver) == expect, f"status {status(driver)!r} for {question!r}"


def answer_text(driver) -> str:
    """The answer's text as the page holds it (citation brackets included, though only the numbers are drawn)."""
    return find(driver, "#answer").get_attribute("textContent")


def source_titles(driver) -> list[str]:
    return [s.find_element("css selector", ".title").text for s in find_all(driver, "#sources .source")]


def tags_inside(driver, css: str) -> set[str]:
    return set(driver.execute_script(
        "return Array.from(document.querySelectorAll(arguments[0] + ' *'), e => e.tagName.toLowerCase())", css))


def assert_no_foreign_elements(driver) -> None:
    assert tags_inside(driver, "#answer") <= ANSWER_TAGS, tags_inside(driver, "#answer")
    assert tags_inside(driver, "#sources") <= SOURCES_TAGS, tags_inside(driver, "#sources")
    classes = driver.execute_script(
        "return Array.from(document.querySelectorAll('#answer *'), e => e.tagName.toLowerCase() + '.' + e.className)")
    assert set(classes) <= {"a.cite", "span.cite-punct"}, classes
    assert driver.execute_script("return document.querySelectorAll('script').length") == 1  # the page's own
    assert driver.execute_script("return window.__pwned === undefined")


def severe_console_errors(driver) -> list[str]:
    """Console errors other than the HTTP statuses the tests provoke on purpose (e.g. 401 at login)."""
    return [e["message"] for e in driver.get_log("browser")
            if e["level"] == "SEVERE" and "Failed to load resource" not in e["message"]]


def fake_ask_stream(driver, chunks: list[str] | None = None, *, status_code: int = 200, body: str = "",
                    hang: bool = False) -> None:
    """Replace the page's fetch of /v1/ask with a canned response (other requests still reach the server).

    The SSE text is delivered in 5-byte pieces, a few milliseconds apart (events and UTF-8 characters split
    across reads); with ``hang`` the stream stays open after the last piece until the page aborts it.
    """
    driver.execute_script("""
        const [chunks, statusCode, body, hang] = arguments;
        const real = window.__realFetch || (window.__realFetch = window.fetch.bind(window));
        window.fetch = (url, opts) => {
          if (!String(url).endsWith('/v1/ask')) return real(url, opts);
          if (statusCode !== 200) {
            return Promise.resolve(new Response(body, {status: statusCode,
                                                       headers: {'Content-Type': 'application/json'}}));
          }
          const bytes = new TextEncoder().encode(chunks.join(''));
          const signal = opts && opts.signal;
          const stream = new ReadableStream({start(c) {
            let i = 0, closed = false;
            if (signal) signal.addEventListener('abort', () => {
              closed = true; try { c.error(new DOMException('The user aborted a request.', 'AbortError')); } catch (e) {}
            });
            const step = () => {
              if (closed) return;
              if (i < bytes.length) { c.enqueue(bytes.slice(i, i + 5)); i += 5; setTimeout(step, 2); }
              else if (!hang) { closed = true; c.close(); }
            };
            step();
          }});
          return Promise.resolve(new Response(stream, {status: 200, headers: {'Content-Type': 'text/event-stream'}}));
        };
    """, chunks or [], status_code, body, hang)


def sse(event: str, data: object) -> str:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n"


def source(n: int, title: str, url: str | None, snippet: str, src: str = "wiki") -> dict:
    return {"n": n, "chunk_id": 100 + n, "document_id": n, "source": src, "external_id": f"doc-{n}", "title": title,
            "url": url, "snippet": snippet, "score": 0.8 - n / 10}


# -- tests ----------------------------------------------------------------------------------------------
def test_bad_key_shows_the_login_error(browser, server):
    open_page(browser, server)
    assert not find(browser, "#login-error").is_displayed()
    log_in(browser, "cl_aaaaaaaaaaaa_" + "x" * 43)
    wait(browser, lambda d: find(d, "#login-error").is_displayed(), "no login error for a bad key")
    assert "not accepted" in find(browser, "#login-error").text
    screenshot(browser, "chat-page-login-error.png")
    assert not find(browser, "#question").is_displayed() and not find(browser, "#logout").is_displayed()
    assert browser.execute_script("return sessionStorage.length") == 0


def test_alice_gets_a_streamed_cited_answer_and_citations_highlight_their_source(browser, server):
    from selenium.webdriver.common.keys import Keys

    logged_in(browser, server, server.keys["alice"])
    assert not find(browser, "#login-error").is_displayed()
    # Shift+Enter is a new line, not a send
    box = find(browser, "#question")
    box.send_keys("first line", Keys.SHIFT, Keys.ENTER, Keys.NULL, "second line")
    assert "\n" in box.get_attribute("value") and status(browser) == ""
    # every state the answer passes through is a prefix of the final text (it only grows)
    browser.execute_script("""
        window.__seen = [];
        new MutationObserver(() => window.__seen.push(document.getElementById('answer').textContent))
          .observe(document.getElementById('answer'), {childList: true, subtree: true, characterData: true});
    """)
    ask(browser, DEPLOY)

    answer = answer_text(browser)
    seen = [s for s in browser.execute_script("return window.__seen") if s]
    assert seen and all(answer.startswith(s.rstrip()) for s in seen), seen
    assert REFUSAL not in answer
    cites = find_all(browser, "#answer a.cite")
    assert cites, f"no citation links in {answer!r}"
    titles = {s.get_attribute("data-n"): s.find_element("css selector", ".title").text
              for s in find_all(browser, "#sources .source")}
    cited_ns = {c.get_attribute("data-n") for c in cites}
    deploy_n = next(n for n, t in titles.items() if t == "Deploy process" and n in cited_ns)  # several chunks
    link = next((c for c in cites if c.get_attribute("data-n") == deploy_n), None)
    assert link is not None, f"no citation of source [{deploy_n}] 'Deploy process' in {answer!r}"
    assert not find_all(browser, "#sources .source.highlight")
    link.click()
    wait(browser, lambda d: find_all(d, "#sources .source.highlight"), "clicking a citation highlighted nothing")
    highlighted = find_all(browser, "#sources .source.highlight")
    assert [h.get_attribute("data-n") for h in highlighted] == [deploy_n]
    assert highlighted[0].find_element("css selector", ".title").text == "Deploy process"
    assert "cited" in highlighted[0].get_attribute("class")
    # each source: number, title, source name, snippet; titles with a URL open in a new tab without opener
    for s in find_all(browser, "#sources .source"):
        assert s.find_element("css selector", ".num").text == f"[{s.get_attribute('data-n')}]"
        assert s.find_element("css selector", ".title").text and s.find_element("css selector", ".snippet").text
        assert s.find_element("css selector", ".from").text
    for a in find_all(browser, "#sources a.title"):
        assert a.get_attribute("href").startswith(("http://", "https://"))
        assert a.get_attribute("target") == "_blank" and "noopener" in a.get_attribute("rel")
    meta = find(browser, "#meta").text
    assert " ms" in meta or " s" in meta, meta
    assert "extractive" in meta, meta
    assert_no_foreign_elements(browser)

    shot = screenshot(browser, "chat-page.png")
    assert shot.is_file() and shot.stat().st_size > 20_000, shot
    # narrow window: one column, no sideways scrolling
    browser.set_window_size(400, 900)
    assert browser.execute_script("return document.documentElement.scrollWidth <= window.innerWidth + 1")
    assert screenshot(browser, "chat-page-narrow.png").stat().st_size > 10_000
    browser.set_window_size(1280, 1000)

    # the key survives a reload (session storage), and logging out forgets it
    browser.refresh()
    wait(browser, lambda d: find(d, "#question").is_displayed(), "a reload lost the session")
    find(browser, "#logout").click()
    wait(browser, lambda d: find(d, "#api-key").is_displayed(), "logging out did not show the login form")
    assert browser.execute_script("return sessionStorage.length") == 0
    browser.refresh()
    wait(browser, lambda d: find(d, "#api-key").is_displayed(), "logged in again after logging out")
    assert severe_console_errors(browser) == []


def test_bob_never_sees_the_engineering_wiki(browser, server):
    logged_in(browser, server, server.keys["bob"])
    ask(browser, DEPLOY)
    page = find(browser, "#chat-view").text
    assert "Deploy process" not in page and "Incident runbook" not in page, page
    assert "engineering/" not in page
    titles = source_titles(browser)
    answer = answer_text(browser)
    assert titles or REFUSAL in answer
    if REFUSAL in answer:
        assert "refused" in find(browser, "#answer").get_attribute("class")
        assert not find_all(browser, "#answer a.cite")
    assert_no_foreign_elements(browser)


def test_planted_page_text_shows_as_text(browser, server):
    """office-printer.md carries a planted instruction with ``>>> ... <<<``: it is evidence, shown as text."""
    logged_in(browser, server, server.keys["bob"])
    ask(browser, PRINTER)
    screenshot(browser, "chat-page-printer.png")
    assert "Office printer setup" in source_titles(browser)
    assert_no_foreign_elements(browser)
    # the same question through the API: every title and snippet is shown exactly as the server sent it
    import httpx

    body = httpx.post(f"{server.url}/v1/ask", json={"question": PRINTER}, timeout=60,
                      headers={"Authorization": f"Bearer {server.keys['bob']}"}).json()
    shown = browser.execute_script("""return Array.from(document.querySelectorAll('#sources .source'), s => [
        s.dataset.n, s.querySelector('.title').textContent, s.querySelector('.snippet').textContent])""")
    assert shown == [[str(s["n"]), s["title"], s["snippet"]] for s in body["sources"]]
    assert any(s["external_id"] == "office-printer.md" and "SYSTEM OVERRIDE" in s["snippet"] for s in body["sources"])
    assert "[9]" not in answer_text(browser)  # the planted citation of evidence that does not exist


def test_hostile_server_text_never_becomes_markup(browser, server):
    """Every field the server sends, made hostile, is rendered as text; only http(s) URLs become links."""
    logged_in(browser, server, server.keys["bob"])
    sources = [source(1, '<img src=x onerror="window.__pwned=1">Evil title', "javascript:window.__pwned=2",
                      '<script>window.__pwned=3</script><b>bold</b> snippet — ünïcode ✓', src="<i>wiki</i>"),
               source(2, "Safe page", "https://docs.example.com/safe", "a safe snippet")]
    text = 'Use <b>this</b> [1] and <img src=x onerror="window.__pwned=4"> [1, 2]. Not evidence: [7]. ✓'
    done = {"question": "q", "answer": text, "refused": False, "citations": sources, "sources": sources,
            "invalid_citations": 0, "model": "<u>model</u>", "best_score": 0.7, "audit_id": 5,
            "latency_ms": {"total_ms": 1234.5}, "usage": {"prompt_tokens": 0, "completion_tokens": 0}}
    pieces = [text[i:i + 7] for i in range(0, len(text), 7)]
    fake_ask_stream(browser, [sse("sources", {"sources": sources, "refused": False, "model": "m", "audit_id": 5}),
                              *(sse("delta", {"text": p}) for p in pieces), sse("done", done)])
    ask(browser, "anything")
    assert answer_text(browser) == text
    assert [a.get_attribute("data-n") for a in find_all(browser, "#answer a.cite")] == ["1", "1", "2"]
    assert_no_foreign_elements(browser)
    screenshot(browser, "chat-page-hostile.png")
    first, second = find_all(browser, "#sources .source")
    assert first.find_element("css selector", ".title").tag_name == "span"  # javascript: is not a link
    assert first.find_element("css selector", ".title").text.startswith("<img")
    assert "<script>" in first.find_element("css selector", ".snippet").text
    assert "ünïcode ✓" in first.find_element("css selector", ".snippet").text  # UTF-8 split across reads
    assert first.find_element("css selector", ".from").text.startswith("<i>wiki</i>")
    assert second.find_element("css selector", ".title").get_attribute("href") == "https://docs.example.com/safe"
    meta = find(browser, "#meta").text
    assert "1.23 s" in meta and "<u>model</u>" in meta and "audit #5" in meta


def test_stop_aborts_a_stream_mid_answer(browser, server):
    logged_in(browser, server, server.keys["bob"])
    sources = [source(1, "A page", None, "snippet")]
    fake_ask_stream(browser, [sse("sources", {"sources": sources, "refused": False, "model": "m", "audit_id": 1}),
                              sse("delta", {"text": "The first part [1] "}), sse("delta", {"text": "and more"})],
                    hang=True)
    find(browser, "#question").send_keys("anything")
    find(browser, "#ask").click()
    wait(browser, lambda d: answer_text(d) == "The first part [1] and more", "the deltas never showed")
    assert status(browser) == "answering…" and find(browser, "#ask").get_attribute("disabled")
    find(browser, "#stop").click()
    wait(browser, lambda d: status(d) == "stopped", f"stop did not stop (status {status(browser)!r})")
    assert answer_text(browser) == "The first part [1] and more"
    assert not find(browser, "#ask").get_attribute("disabled") and find(browser, "#stop").get_attribute("disabled")


def test_refusal_and_errors_are_shown(browser, server):
    logged_in(browser, server, server.keys["bob"])
    closest = [source(1, "Return policy", None, "Returns within 30 days.")]
    refusal = {"question": "q", "answer": REFUSAL, "refused": True, "citations": [], "sources": closest,
               "invalid_citations": 0, "model": "m", "best_score": 0.1, "audit_id": 2,
               "latency_ms": {"total_ms": 12.0}, "usage": {}}
    fake_ask_stream(browser, [sse("sources", {"sources": closest, "refused": True, "model": "m", "audit_id": 2}),
                              sse("delta", {"text": REFUSAL}), sse("done", refusal)])
    ask(browser, "what is the capital of Mongolia")
    assert answer_text(browser) == REFUSAL and "refused" in find(browser, "#answer").get_attribute("class")
    assert "closest" in find(browser, "#sources-heading").text and source_titles(browser) == ["Return policy"]
    screenshot(browser, "chat-page-refusal.png")

    fake_ask_stream(browser, [sse("sources", {"sources": closest, "refused": False, "model": "m", "audit_id": 3}),
                              sse("delta", {"text": "Half"}), sse("error", {"message": "backend fell over"})])
    ask(browser, "again", expect="error: backend fell over")

    fake_ask_stream(browser, status_code=503, body=json.dumps(
        {"error": {"message": "the audit log cannot be written", "code": "audit_unavailable"}}))
    ask(browser, "again", expect="error: the audit log cannot be written (audit_unavailable)")

    fake_ask_stream(browser, [sse("sources", {"sources": closest, "refused": False, "model": "m", "audit_id": 4}),
                              sse("delta", {"text": "cut"})])
    ask(browser, "again", expect="error: the answer stream ended before it was complete")

    # a key revoked mid-session: back to the login form, with the reason
    fake_ask_stream(browser, status_code=401, body=json.dumps(
        {"error": {"message": "invalid API key", "code": "invalid_api_key"}}))
    find(browser, "#question").send_keys("again")
    find(browser, "#ask").click()
    wait(browser, lambda d: find(d, "#login-error").is_displayed(), "a 401 did not return to the login form")
    assert "invalid API key" in find(browser, "#login-error").text
    assert not find(browser, "#question").is_displayed()
    assert browser.execute_script("return sessionStorage.length") == 0


PLANTED_HTML = """---
title: Parking permits <img src=x onerror="window.__pwned='title'"> <b>now</b>
---
# Parking permits

Parking permits for the visitor car park are issued by reception <script>window.__pwned='script'</script>
on the ground floor. Bring your badge <img src=x onerror="window.__pwned='img'"> and your car's
registration number; a parking permit is valid for one year. <a href="javascript:window.__pwned='a'">renew</a>
"""


def test_planted_html_in_a_wiki_page_shows_as_text(browser, server, embedder):
    """A wiki page with HTML in its title and text (synced into the running server's index) stays text.

    Last in the module on purpose: it adds a page to the shared server's index.
    """
    from citeline.facade import Citeline

    (server.config.parent / "wiki" / "parking.md").write_text(PLANTED_HTML, encoding="utf-8")
    with Citeline(server.settings(), embedder=embedder) as cl:
        cl.sync("wiki")
    logged_in(browser, server, server.keys["bob"])
    ask(browser, "where do I get a parking permit")
    screenshot(browser, "chat-page-planted-html.png")
    assert_no_foreign_elements(browser)
    titles = source_titles(browser)
    assert any(t.startswith("Parking permits <img") for t in titles), titles
    shown = find(browser, "#sources").get_attribute("textContent") + answer_text(browser)
    assert "<script>" in shown or "<img" in shown.split("Parking permits", 2)[-1], shown
    html = browser.execute_script("return document.getElementById('sources').innerHTML")
    assert "&lt;img" in html  # escaped by the DOM, never parsed as markup


def test_page_needs_nothing_from_other_origins(server):
    import httpx

    html = httpx.get(server.url + "/", timeout=30).text
    for needle in ("<script src", "<link ", "@import", "http://", "https://", ".innerHTML", "EventSource("):
        assert needle not in html, needle
