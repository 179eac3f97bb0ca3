"""The dashboard in a real browser: headless Chromium (Debian's package) driven by Playwright.

Log in, see a task added over HTTP, open it, Run now, see it completed, filter the list, log out;
a wrong token is refused. The run also takes the screenshots in docs/ that the README shows.
Skipped with the reason when there is no Chromium, but never when ``CI`` is set (.ci/run installs
it). Every wait has a deadline (Playwright's timeouts); nothing is timed.
"""

import os
import shutil
from pathlib import Path

import pytest

from party.client import BlockingHTTPClient
from tests.serving import ROOT, ServerThread

CHROMIUM = os.environ.get("PARTY_CHROMIUM", "/usr/bin/chromium")
TOKEN = "browser-token"
DOCS = ROOT / "docs"

if not Path(CHROMIUM).exists() or shutil.which(CHROMIUM) is None:
    if os.environ.get("CI"):
        raise RuntimeError(f"CI is set but {CHROMIUM} is missing: .ci/run installs chromium")
    pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium)", allow_module_level=True)

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")

pytestmark = pytest.mark.processes


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-background-networking",
                  "--disable-component-update"],
        )  # fmt: skip
        yield browser
        browser.close()


@pytest.fixture
def served(tmp_path):
    server = ServerThread(tmp_path / "party.db", tmp_path / "party.sock", token=TOKEN).start()
    yield server
    server.stop()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1200, "height": 800})
    context.set_default_timeout(10_000)
    page = context.new_page()
    yield page
    context.close()


def test_log_in_see_run_filter_and_log_out(served, page, tmp_path):
    # The README's screenshots are rewritten only on request: a test run leaves the tree clean.
    shots = DOCS if os.environ.get("PARTY_UPDATE_SCREENSHOTS") else tmp_path
    base = f"http://127.0.0.1:{served.port}"
    with BlockingHTTPClient(served.sock, token=TOKEN) as con:
        noop = {"party": "Noop", "data": {"return": 42, "note": "find-me"}}
        (task,) = con.request("/tasks", None, data={"tasks": [noop]}, method="POST")
        con.request("/tasks", None, data={"tasks": [{"party": "Boom", "data": {"n": i}}
                                                    for i in range(3)]}, method="POST")  # fmt: skip

    page.goto(base + "/ui")
    assert page.url == base + "/ui/login"  # 303 without a session
    page.fill("#token", TOKEN)
    page.click("#login")
    page.wait_for_url(base + "/ui")
    cookie = next(c for c in page.context.cookies() if c["name"] == "party_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert page.locator("text=live schedulers").count() == 1
    page.screenshot(path=str(shots / "dashboard-overview.png"), full_page=True)

    page.click("header nav >> text=Tasks")
    row = page.locator("#tasks tr", has_text=task["_id"])
    row.locator("a").click()
    page.wait_for_url(f"{base}/ui/task/{task['_id']}")
    assert page.inner_text("#status") == "queued"
    assert "no_handler" in page.inner_text("#waiting")  # no scheduler is live in this test
    page.click("#run-now")
    page.wait_for_selector("#flash")
    assert page.inner_text("#status") == "completed"
    assert "42" in page.inner_text("#result")
    page.screenshot(path=str(shots / "dashboard-task.png"), full_page=True)

    page.goto(base + "/ui/tasks")
    page.select_option("#f-party", "Boom")
    page.click("#filter")
    page.wait_for_url("**party=Boom**")
    assert page.locator("#tasks tr").count() == 1 + 3
    page.goto(base + "/ui/tasks?status=completed")
    page.fill("#f-q", "find-me")
    page.click("#filter")
    page.wait_for_selector("#scan-note")
    assert page.locator("#tasks tr").count() == 2

    page.click("#logout")
    page.wait_for_url(base + "/ui/login")
    page.goto(base + "/ui")
    assert page.url == base + "/ui/login"


def test_a_wrong_token_is_refused(served, page):
    base = f"http://127.0.0.1:{served.port}"
    page.goto(base + "/ui/login")
    page.fill("#token", "not-the-token")
    page.click("#login")
    page.wait_for_selector("#login-error")
    assert page.url == base + "/ui/login"
    assert not [c for c in page.context.cookies() if c["name"] == "party_session"]
    page.goto(base + "/ui/tasks")
    assert page.url == base + "/ui/login"
