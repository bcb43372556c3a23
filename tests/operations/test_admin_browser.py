"""The outbox admin in a real browser: Debian's Chromium driven by Playwright.

Screenshots of each step land in ``artifacts/`` (not committed) for a human to look at; the
ones in docs/images/ are copies of some of them. At 1,024 and 1,400 px the tests check that
the columns an operator needs lie inside the window (their bounding boxes), not just in the
page. ``scripts/test.sh`` installs the browser (``scripts/browser.sh``) before the suite runs.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import pytest
from django.contrib.admin.models import LogEntry
from django.contrib.auth.models import Permission, User
from playwright.sync_api import Browser, Page, expect, sync_playwright
from pytest_django.live_server_helper import LiveServer

from outbox.models import DeadLetter, OutboxMessage
from tests.broker import bound_queue
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


def log_in(
    browser: Browser,
    live_server: LiveServer,
    username: str,
    *,
    width: int = 1400,
    start: str = CHANGELIST,
) -> Page:
    page = browser.new_page(viewport={"width": width, "height": 900})
    page.goto(f"{live_server.url}/admin/login/?next={start}")
    page.fill("#id_username", username)
    page.fill("#id_password", PASSWORD)
    page.click("input[type=submit]")
    expect(page.locator("#content h1")).to_be_visible()
    if start == CHANGELIST:
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


# --- issue 15: the stuck-row flow and dead letters at 1,024 and 1,400 px ---

#: The list columns an operator needs, by Django's ``column-<name>`` class.
OUTBOX_COLUMNS = [
    "short_message_id",
    "status_badge",
    "short_event_type",
    "ordering_key_list",
    "created_short",
    "short_attempts",
    "short_last_error",
]
DEAD_LETTER_COLUMNS = [
    "short_message_id",
    "consumer",
    "short_event_type",
    "status_badge",
    "dead_lettered_short",
    "short_attempts",
    "short_error",
]
DEAD_LETTERS = "/admin/outbox/deadletter/"


def assert_inside_window(page: Page, columns: list[str]) -> None:
    """Each column's header and first cell lie inside the viewport, and each cell is one line
    high (an id or an error wrapping over several lines is what made the old list unreadable)."""
    viewport = page.viewport_size
    assert viewport is not None
    width = viewport["width"]
    line_height = page.locator("#result_list thead th").first.bounding_box()
    assert line_height is not None
    for column in columns:
        for cell in (
            page.locator(f"#result_list thead th.column-{column}"),
            page.locator(f"#result_list tbody tr:first-child .field-{column}"),
        ):
            box = cell.bounding_box()
            assert box is not None, f"{column} is not rendered"
            assert box["x"] >= 0, f"{column} starts left of the window: {box}"
            assert box["x"] + box["width"] <= width, f"{column} ends past {width} px: {box}"
    one_line = page.locator("#result_list tbody tr:first-child .outbox-id").bounding_box()
    assert one_line is not None
    assert one_line["height"] < 24, f"the short id wraps: {one_line}"


def screenshot(page: Page, name: str, *, full_page: bool = False) -> None:
    page.screenshot(path=ARTIFACTS / name, full_page=full_page)


def test_operator_follows_blocked_by_to_the_failed_row_and_retries_it(
    live_server: LiveServer, make_message: MakeMessage
) -> None:
    User.objects.create_superuser("operator", password=PASSWORD)
    for number in range(3):
        make_message(
            OutboxMessage.Status.PUBLISHED,
            event_type="orders.order_shipped",
            last_error="connection refused" if number == 0 else "",
        )
    failed = make_message(
        OutboxMessage.Status.FAILED,
        age=timedelta(minutes=47),
        aggregate_id="9",
        attempts=10,
        event_type="billing.invoice_issued",
        last_error="NOT_FOUND - no exchange 'billing' in vhost '/' (the exchange was deleted"
        " during a deploy; every attempt since has been refused)",
    )
    blocked = make_message(OutboxMessage.Status.READY, age=timedelta(minutes=41), aggregate_id="9")
    make_message(OutboxMessage.Status.READY, age=timedelta(seconds=3))

    with chromium() as browser:
        operator_follows_blocked_by(browser, live_server, blocked.pk, failed.pk)

    row = refreshed(failed)
    assert (row.status, row.attempts) == (OutboxMessage.Status.READY, 0)
    assert LogEntry.objects.get().object_id == str(failed.pk)


def operator_follows_blocked_by(
    browser: Browser, live_server: LiveServer, blocked_pk: int, failed_pk: int
) -> None:
    for width in (1400, 1024):
        page = log_in(browser, live_server, "operator", width=width)
        page.click("text=failed, or ready over 5 min")
        expect(page.locator("#result_list tbody tr")).to_have_count(2)
        assert_inside_window(page, OUTBOX_COLUMNS)
        screenshot(page, f"admin-stuck-{width}.png")
        if width == 1400:
            page.close()

    # The ready row is marked blocked; its detail leads to the row holding it back.
    blocked_row = page.locator("#result_list tbody tr", has=page.locator(".outbox-blocked"))
    expect(blocked_row).to_have_count(1)
    blocked_row.locator("th a").click()
    expect(page.locator(".field-status_detail")).to_contain_text("blocked by")
    expect(page.locator(".field-lease")).to_contain_text("no relay holds it")
    screenshot(page, "admin-detail-blocked-1024.png", full_page=True)

    page.click("#outbox-blocked-by")
    expect(page).to_have_url(re.compile(rf"/outboxmessage/{failed_pk}/change/$"))
    expect(page.locator(".field-current_error pre")).to_contain_text("NOT_FOUND")
    expect(page.locator(".field-attempts")).to_contain_text("10")
    screenshot(page, "admin-detail-failed-1024.png", full_page=True)

    page.click("#outbox-button-retry_now")
    expect(page.locator("#outbox-confirmation-counts")).to_contain_text("1 of 1")
    expect(page.locator("#outbox-confirmation tbody tr")).to_have_count(1)
    screenshot(page, "admin-confirm-retry-1024.png")
    page.click("#outbox-confirm")

    expect(page).to_have_url(re.compile(rf"/outboxmessage/{failed_pk}/change/$"))
    expect(page.locator(".messagelist")).to_contain_text("1 message(s) set to ready, due now.")
    expect(page.locator(".field-status_detail .outbox-status")).to_have_text("ready")
    screenshot(page, "admin-after-retry-1024.png")

    # The key's link lists its rows in the order the relay sends them.
    page.click(".field-ordering_key_link a")
    expect(page.locator("#result_list tbody tr")).to_have_count(2)
    first_link = page.locator("#result_list tbody tr:first-child th a")
    expect(first_link).to_have_attribute("href", re.compile(rf"/{failed_pk}/change/"))


def test_operator_requeues_a_dead_letter(
    live_server: LiveServer, make_dead_letter: Callable[..., DeadLetter]
) -> None:
    User.objects.create_superuser("operator", password=PASSWORD)
    with bound_queue() as queue:
        for number in range(3):
            make_dead_letter(consumer="billing", message_id=f"older-{number}", status="requeued")
        record = make_dead_letter(
            queue=queue.name,
            error="KeyError: 'sku' while reserving stock for order 42 (the catalogue had no"
            " such product when the handler ran)",
        )

        with chromium() as browser:
            operator_requeues(browser, live_server, record.message_id)

        [message] = queue.get(1)
    assert message.properties.message_id == record.message_id
    record.refresh_from_db()
    assert (record.status, record.resolved_by) == ("requeued", "operator in the admin")


def operator_requeues(browser: Browser, live_server: LiveServer, message_id: str) -> None:
    for width in (1400, 1024):
        page = log_in(browser, live_server, "operator", width=width, start=DEAD_LETTERS)
        page.click("#changelist-filter a:text-is('dead')")
        expect(page.locator("#result_list tbody tr")).to_have_count(1)
        assert_inside_window(page, DEAD_LETTER_COLUMNS)
        screenshot(page, f"admin-dead-letters-{width}.png")
        if width == 1400:
            page.close()

    page.locator("#result_list tbody tr th a").click()
    expect(page.locator(".field-formatted_traceback pre")).to_contain_text("KeyError")
    screenshot(page, "admin-dead-letter-detail-1024.png", full_page=True)
    page.click("#outbox-button-requeue")
    expect(page.locator("#outbox-confirmation")).to_contain_text(message_id[:8])
    screenshot(page, "admin-confirm-requeue-1024.png")
    page.click("#outbox-confirm")
    expect(page.locator(".messagelist")).to_contain_text("1 dead letter(s) requeued.")
    expect(page.locator(".field-status_detail")).to_contain_text("requeued by operator")
