"""The outbox admin in a real browser: Debian's Chromium driven by Playwright.

Screenshots of each step land in ``artifacts/`` (not committed) for a human to look at.
``scripts/test.sh`` installs the browser (``scripts/browser.sh``) before the suite runs.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import pytest
from django.contrib.auth.models import Permission, User
from playwright.sync_api import Browser, Page, expect, sync_playwright
from pytest_django.live_server_helper import LiveServer

from outbox.models import OutboxMessage
from tests.operations.conftest import MakeMessage, refreshed

CHROMIUM = Path("/usr/bin/chromium")
# The machine has no network: nothing in the browser may try to reach out.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"
CHANGELIST = "/admin/outbox/outboxmessage/"
PASSWORD = "correct horse battery staple"

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


@contextmanager
def chromium() -> Iterator[Browser]:
    """A headless Chromium for one test.

    The test touches the database only outside this block: Playwright's sync API runs the
    block in its own greenlet, where Django would open (and leave open) another connection.
    """
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: run `bash scripts/browser.sh` (as root) first")
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
        )
        try:
            yield browser
        finally:
            browser.close()


def log_in(browser: Browser, live_server: LiveServer, username: str) -> Page:
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    page.goto(f"{live_server.url}/admin/login/?next={CHANGELIST}")
    page.fill("#id_username", username)
    page.fill("#id_password", PASSWORD)
    page.click("input[type=submit]")
    expect(page.locator("#outbox-summary")).to_be_visible()
    return page


def test_operator_retries_a_failed_row_from_the_stuck_filter(
    live_server: LiveServer, make_message: MakeMessage
) -> None:
    User.objects.create_superuser("operator", password=PASSWORD)
    failed = make_message(
        OutboxMessage.Status.FAILED,
        age=timedelta(minutes=12),
        attempts=10,
        last_error="NOT_FOUND - no exchange 'billing' in vhost '/'",
        event_type="billing.invoice_issued",
    )
    make_message(OutboxMessage.Status.READY, age=timedelta(minutes=40))
    make_message(OutboxMessage.Status.PUBLISHED, published_ago=timedelta(seconds=20))
    fresh = make_message(OutboxMessage.Status.READY)

    with chromium() as browser:
        operator_retries_the_failed_row(browser, live_server, failed.pk, fresh.pk)

    row = refreshed(failed)
    assert (row.status, row.attempts) == (OutboxMessage.Status.READY, 0)


def operator_retries_the_failed_row(
    browser: Browser, live_server: LiveServer, failed_pk: int, fresh_pk: int
) -> None:
    page = log_in(browser, live_server, "operator")
    page.screenshot(path=ARTIFACTS / "admin-1-changelist.png", full_page=True)
    expect(page.locator("#outbox-summary-failed .figure")).to_have_text("1")

    page.click("text=failed, or ready over 5 min")
    rows = page.locator("#result_list tbody tr")
    expect(rows).to_have_count(2)  # the failed row and the 40-minute-old ready row
    expect(page.locator(f"input[name=_selected_action][value='{fresh_pk}']")).to_have_count(0)
    page.screenshot(path=ARTIFACTS / "admin-2-stuck-filter.png", full_page=True)

    page.check(f"input[name=_selected_action][value='{failed_pk}']")
    page.select_option("select[name=action]", "retry_now")
    page.click("button[name=index]")

    expect(page.locator(".messagelist")).to_contain_text("1 message(s) set to ready, due now.")
    failed_row = page.locator("#result_list tbody tr", has_text="billing.invoice_issued")
    expect(failed_row.locator(".outbox-status")).to_have_text("ready")
    page.screenshot(path=ARTIFACTS / "admin-3-after-retry.png", full_page=True)

    page.click(f"a[href$='/outboxmessage/{failed_pk}/change/?_changelist_filters=stuck%3Dyes']")
    expect(page.locator(".field-formatted_payload pre")).to_contain_text('"order_id"')
    page.screenshot(path=ARTIFACTS / "admin-4-detail.png", full_page=True)


def test_staff_without_the_permission_cannot_retry(
    live_server: LiveServer, make_message: MakeMessage
) -> None:
    viewer = User.objects.create_user("viewer", password=PASSWORD, is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_outboxmessage"))
    failed = make_message(OutboxMessage.Status.FAILED, last_error="poison message")

    with chromium() as browser:
        status = viewer_tries_to_retry(browser, live_server, failed.pk)

    assert status < 500
    assert refreshed(failed).status == OutboxMessage.Status.FAILED


def viewer_tries_to_retry(browser: Browser, live_server: LiveServer, failed_pk: int) -> int:
    """Return the HTTP status of a hand-made POST of the action."""
    page = log_in(browser, live_server, "viewer")
    page.click("text=failed, or ready over 5 min")
    expect(page.locator("#result_list tbody tr")).to_have_count(1)
    # No action the viewer may run, so no action bar and no checkboxes at all.
    expect(page.locator("select[name=action]")).to_have_count(0)
    expect(page.locator("input[name=_selected_action]")).to_have_count(0)
    page.screenshot(path=ARTIFACTS / "admin-5-viewer.png", full_page=True)

    # Posting the action by hand is refused the same way.
    response = page.request.post(
        f"{live_server.url}{CHANGELIST}",
        form={
            "action": "retry_now",
            "_selected_action": str(failed_pk),
            "index": "0",
            "csrfmiddlewaretoken": _csrf_token(page),
        },
    )
    return response.status


def _csrf_token(page: Page) -> str:
    for cookie in page.context.cookies():
        if cookie["name"] == "csrftoken":
            return str(cookie["value"])
    raise AssertionError("no CSRF cookie after logging in")
