"""streamq.dashboard in a real browser: headless Chromium (Debian's `chromium` and `chromium-driver`),
driven by Selenium, against `streamq dashboard` servers started as the command (uvicorn) on real data made
by real workers.

It loads every page, clicks through the dead-letter browser, replays a letter on a dashboard started with
--allow-writes (logging in with its token) and checks in Redis that the letter went back to its group, and
checks that a dashboard started without --allow-writes refuses the same POST. Screenshots go to
tests/artifacts/ (not committed). With STREAMQ_UPDATE_SCREENSHOT=1 the overview's screenshot is also
written to docs/dashboard.png, the picture in the README.

Skipped, saying why, where Selenium, Chromium or chromedriver is missing (.ci/run installs the browser
where it can). Runs against one test server only (the first found): the HTTP-level tests in
test_dashboard.py cover every server.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
from helpers import wait_until

import streamq
from streamq import keys
from streamq.control import pause_sync
from streamq.deadletter import SyncDeadLetters
from streamq.embedded import ServerBinary, find_server_binaries

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "tests" / "artifacts"
README_PICTURE = REPO / "docs" / "dashboard.png"
CHROMIUM = os.environ.get("STREAMQ_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = (
    os.environ.get("STREAMQ_CHROMEDRIVER") or shutil.which("chromedriver") or "/usr/bin/chromedriver"
)
TOKEN = "browser-test-token-1234"
WINDOW = (1360, 900)

try:
    from selenium import webdriver
    from selenium.common.exceptions import (
        NoSuchElementException,
        StaleElementReferenceException,
        WebDriverException,
    )
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select
except ImportError:  # pragma: no cover - the dev extra brings it
    webdriver = None


def _missing() -> str | None:
    if webdriver is None:
        return "selenium is not installed (pip install -e '.[dev]')"
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not os.access(path, os.X_OK):
            return f"no {path}: install Debian's {package} (apt-get install -y chromium chromium-driver)"
    return None


pytestmark = [pytest.mark.skipif(_missing() is not None, reason=_missing() or ""), pytest.mark.slow]


class Order(streamq.Event, tag="test.dashboard.browser.order"):
    n: int
    customer: str
    cents: int


class Payment(streamq.Event, tag="test.dashboard.browser.payment"):
    n: int
    cents: int


# ---------------------------------------------------------------------------------------------- data


@dataclass
class Shop:
    url: str
    orders: str
    payments: str


def _worker_app(url: str, shop: Shop) -> streamq.App:
    fast: dict[str, Any] = {"block_ms": 100, "retry_base_ms": 50, "retry_max_ms": 100, "retention": False}
    app = streamq.App(url)

    @app.consumer(shop.orders, group="billing", max_attempts=2, lease_ms=5_000, **fast)
    async def bill(order: Order) -> None:
        if order.n % 17 == 3:
            raise streamq.Reject(f"customer {order.customer} has no billing address")
        if order.n % 29 == 5:
            raise ConnectionError("ledger service unavailable")

    # A long lease: the orders a stuck consumer holds (see _make_shop) stay pending, and show so.
    @app.consumer(shop.orders, group="shipping", lease_ms=600_000, **fast)
    async def ship(order: Order) -> None:
        pass

    @app.consumer(shop.payments, group="ledger", lease_ms=5_000, **fast)
    async def book(payment: Payment) -> None:
        pass

    return app


class Traffic:
    """A worker (in a thread, its own event loop) and a producer publishing a few orders at a time, so the
    charts have something to draw; both stop when the test is done."""

    def __init__(self, shop: Shop) -> None:
        self.shop = shop
        self.app = _worker_app(shop.url, shop)
        self.done = threading.Event()
        self.sent = 0
        self._threads = [
            threading.Thread(target=lambda: asyncio.run(self.app.run()), daemon=True),
            threading.Thread(target=self._publish, daemon=True),
        ]

    def _publish(self) -> None:
        with streamq.SyncProducer(self.shop.url) as producer:
            for _ in range(600):  # bounded: at most a minute at this pace
                if self.done.wait(0.1):
                    return
                first = 1000 + self.sent
                producer.publish_many(self.shop.orders, [Order(n, f"c{n % 7}", 100 + n) for n in
                                                         range(first, first + 8)])  # fmt: skip
                producer.publish(self.shop.payments, Payment(first, 250))
                self.sent += 8

    def __enter__(self) -> Traffic:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        self.app.stop()
        for thread in self._threads:
            thread.join(20)


def _make_shop(url: str) -> Shop:
    suffix = uuid.uuid4().hex[:4]
    shop = Shop(url=url, orders=f"shop-{suffix}:orders", payments=f"shop-{suffix}:payments")
    with streamq.SyncProducer(url) as producer:
        producer.publish_many(shop.orders, [Order(n, f"c{n % 7}", 100 + n) for n in range(60)])
        producer.publish_many(shop.payments, [Payment(n, 250) for n in range(20)])
        for n in range(3):
            producer.publish(shop.orders, Order(500 + n, "later", 1), delay_ms=3_600_000)
    client = redis.Redis.from_url(url)
    client.xadd(shop.orders, {"d": b"\xc1 truncated by a legacy producer"})
    asyncio.run(asyncio.wait_for(_worker_app(url, shop).run_until_idle(), 60))
    # A consumer that holds three orders (its leases), and a paused group.
    with streamq.SyncProducer(url) as producer:
        producer.publish_many(shop.orders, [Order(n, "held", 1) for n in range(900, 903)])
    client.xreadgroup("shipping", "shipping-worker-7", {shop.orders: ">"}, count=3)
    pause_sync(url, shop.payments, "ledger", reason="ledger migration")
    client.close()
    return shop


# ---------------------------------------------------------------------------------------------- servers


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass
class Dashboard:
    base: str
    process: subprocess.Popen[bytes]
    log: Path


def _start_dashboard(url: str, streams: list[str], name: str, *extra: str, env: dict[str, str]) -> Dashboard:
    port = _free_port()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    log = ARTIFACTS / f"{name}.log"
    argv = [sys.executable, "-m", "streamq", "dashboard", *streams, "--port", str(port), "--redis-url", url,
            "--refresh-ms", "500", "--import", "test_dashboard_browser", *extra]  # fmt: skip
    environment = {**os.environ, **env, "PYTHONPATH": str(REPO / "tests") + os.pathsep + str(REPO)}
    with log.open("wb") as out:
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=environment, cwd=REPO)
    base = f"http://127.0.0.1:{port}"

    def up() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"the dashboard exited {process.returncode}: {log.read_text()}")
        try:
            with urllib.request.urlopen(base + "/static/dashboard.css", timeout=2) as reply:
                return bool(reply.status == 200)
        except (urllib.error.URLError, ConnectionError):
            return False

    wait_until(up, timeout_s=30, interval_s=0.1, message=f"the {name} dashboard to answer")
    return Dashboard(base=base, process=process, log=log)


def _stop(dashboard: Dashboard) -> None:
    dashboard.process.terminate()
    try:
        dashboard.process.wait(15)
    except subprocess.TimeoutExpired:
        dashboard.process.kill()
        dashboard.process.wait(5)


@pytest.fixture(scope="module")
def first_server(server_binary: ServerBinary | None) -> None:
    binaries = find_server_binaries()
    if server_binary is not None and binaries and server_binary != binaries[0]:
        pytest.skip(
            f"browser tests run against {binaries[0].label} only; test_dashboard.py covers every server"
        )


@pytest.fixture(scope="module")
def shop(first_server: None, redis_url: str) -> Shop:
    return _make_shop(redis_url)


@pytest.fixture(scope="module")
def read_only(shop: Shop) -> Iterator[Dashboard]:
    dashboard = _start_dashboard(shop.url, [shop.orders, shop.payments], "read-only", env={})
    yield dashboard
    _stop(dashboard)


@pytest.fixture(scope="module")
def with_writes(shop: Shop) -> Iterator[Dashboard]:
    dashboard = _start_dashboard(shop.url, [shop.orders, shop.payments], "writes", "--allow-writes",
                                 env={"STREAMQ_DASHBOARD_TOKEN": TOKEN})  # fmt: skip
    yield dashboard
    _stop(dashboard)


@pytest.fixture(scope="module")
def browser(first_server: None) -> Iterator[Any]:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     f"--window-size={WINDOW[0]},{WINDOW[1]}", "--hide-scrollbars"):  # fmt: skip
        options.add_argument(argument)
    os.environ.setdefault("SE_OFFLINE", "true")  # never let Selenium Manager look for a driver online
    try:
        driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    except WebDriverException as exc:
        pytest.skip(f"Chromium would not start here: {exc.msg}")
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def _shot(browser: Any, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    browser.save_screenshot(str(path))
    return path


def _text(browser: Any) -> str:
    """The page's text; "" while a navigation or a refresh replaces what was found."""
    try:
        return str(browser.find_element(By.TAG_NAME, "body").text)
    except (StaleElementReferenceException, NoSuchElementException):
        return ""


def _wait_for_text(browser: Any, text: str) -> None:
    wait_until(lambda: text in _text(browser), timeout_s=15, message=f"{text!r} on {browser.current_url}")


# ---------------------------------------------------------------------------------------------- tests


def test_every_page_loads(browser: Any, read_only: Dashboard, shop: Shop) -> None:
    browser.get(read_only.base + "/")
    _wait_for_text(browser, shop.orders)
    body = _text(browser)
    assert "billing" in body and "shipping" in body and "ledger" in body and "read-only" in body
    assert browser.find_elements(By.CSS_SELECTOR, ".badge.paused")  # the ledger group's pause
    _shot(browser, "overview")
    browser.find_element(By.LINK_TEXT, shop.orders).click()
    _wait_for_text(browser, "shipping-worker-7")
    assert len(browser.find_elements(By.CSS_SELECTOR, ".lease")) >= 3
    _shot(browser, "stream")
    browser.get(read_only.base + "/where")
    _wait_for_text(browser, "Where is my event")
    _shot(browser, "where-empty")
    errors = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
    assert not errors, errors  # no CSP violation, no script error


def test_the_dead_letter_browser_is_clicked_through(browser: Any, read_only: Dashboard, shop: Shop) -> None:
    browser.get(read_only.base + "/")
    _wait_for_text(browser, shop.orders)
    browser.find_element(By.CSS_SELECTOR, f'a[href="/stream/{shop.orders}/dead-letters"]').click()
    _wait_for_text(browser, "Dead letters of")
    every = len(browser.find_elements(By.CSS_SELECTOR, "a.letter"))
    Select(browser.find_element(By.NAME, "group")).select_by_value("billing")
    Select(browser.find_element(By.NAME, "reason")).select_by_value("rejected")
    browser.find_element(By.CSS_SELECTOR, "form.filters button").click()
    wait_until(lambda: "reason=rejected" in browser.current_url, message="the filtered page")
    rejected = browser.find_elements(By.CSS_SELECTOR, "a.letter")
    assert 0 < len(rejected) < every
    assert {b.text for b in browser.find_elements(By.CSS_SELECTOR, "table.letters .badge")} == {"rejected"}
    _shot(browser, "dead-letters-filtered")
    rejected[0].click()
    _wait_for_text(browser, "has no billing address")
    body = _text(browser)
    assert "test_dashboard_browser.Order" in body  # decoded: the dashboard imported the event classes
    assert "Traceback" in body or "Reject" in body
    assert not browser.find_elements(By.CSS_SELECTOR, "form[method=post]")  # read-only: nothing to press
    _shot(browser, "dead-letter")
    browser.find_element(By.CSS_SELECTOR, 'dd a[href*="/where?"]').click()  # the event id: where is it now
    _wait_for_text(browser, "In each group")
    assert "billing" in _text(browser)
    _shot(browser, "where")


def test_writes_are_refused_without_allow_writes(browser: Any, read_only: Dashboard, shop: Shop) -> None:
    with SyncDeadLetters(shop.url) as dead:
        letter = dead.list(shop.orders, group="billing")[0]
    browser.get(read_only.base + f"/stream/{shop.orders}/dead-letters/{letter.dlq_id}")
    status = browser.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "fetch(arguments[0], {method: 'POST',"
        " headers: {'content-type': 'application/x-www-form-urlencoded'},"
        " body: 'id=' + encodeURIComponent(arguments[1])})"
        ".then(r => r.text().then(t => done([r.status, t])));",
        f"/stream/{shop.orders}/dead-letters/replay", letter.dlq_id,
    )  # fmt: skip
    assert status[0] == 403 and "writes are off" in status[1]
    with SyncDeadLetters(shop.url) as dead:
        assert dead.show(shop.orders, letter.dlq_id).dlq_id == letter.dlq_id


def test_a_letter_replayed_with_writes_allowed_goes_back_to_its_group(
    browser: Any, with_writes: Dashboard, shop: Shop
) -> None:
    browser.get(with_writes.base + "/")
    wait_until(lambda: "/login" in browser.current_url, message="the login page")
    browser.find_element(By.NAME, "token").send_keys(TOKEN)
    browser.find_element(By.CSS_SELECTOR, "form.login button").click()
    _wait_for_text(browser, shop.orders)
    assert "writes allowed" in _text(browser)
    browser.get(with_writes.base + f"/stream/{shop.orders}/dead-letters?group=billing&reason=rejected")
    _wait_for_text(browser, "Dead letters of")
    link = browser.find_elements(By.CSS_SELECTOR, "a.letter")[0]
    dlq_id = link.text
    with SyncDeadLetters(shop.url) as dead:
        letter = dead.show(shop.orders, dlq_id)
    retry_key = keys.retry_key(shop.orders, "billing")
    client = redis.Redis.from_url(shop.url)
    before = client.xlen(retry_key)
    link.click()
    _wait_for_text(browser, "replay to its group")
    _shot(browser, "dead-letter-writable")
    browser.find_element(By.XPATH, "//button[text()='replay to its group']").click()
    _wait_for_text(browser, "1 dead letter(s) sent back to their group")
    _shot(browser, "replayed")
    entries = client.xrange(retry_key)
    assert len(entries) == before + 1
    assert letter.payload is not None and letter.payload in b"".join(entries[-1][1].values())
    with SyncDeadLetters(shop.url) as dead:
        assert dlq_id not in {d.dlq_id for d in dead.list(shop.orders)}
    client.close()


def _samples(browser: Any) -> int:
    """The points of the overview's first chart (one per refresh, after the first)."""
    try:
        lines = browser.find_elements(By.CSS_SELECTOR, "section.stream polyline")
        return len(str(lines[0].get_attribute("points")).split()) if lines else 0
    except StaleElementReferenceException:
        return 0


def test_the_overview_charts_live_rates(browser: Any, read_only: Dashboard, shop: Shop) -> None:
    """With a worker and a producer running, the overview's charts fill in as the page refreshes itself;
    its screenshot is the README's picture."""
    browser.get(read_only.base + "/")
    _wait_for_text(browser, shop.orders)
    with Traffic(shop):

        def drawn() -> bool:
            try:
                rates = [r.text for r in browser.find_elements(By.CSS_SELECTOR, ".spark .rate")]
            except StaleElementReferenceException:  # the page refreshed itself meanwhile
                return False
            lines = browser.find_elements(By.CSS_SELECTOR, "section.stream polyline")
            moving = [rate for rate in rates if rate.endswith("/s") and float(rate[:-2].replace(",", "")) > 0]
            return len(lines) >= 4 and len(moving) >= 3

        wait_until(drawn, timeout_s=40, interval_s=0.25, message="charts with samples")
        wait_until(lambda: _samples(browser) >= 12, timeout_s=30, interval_s=0.25, message="a dozen samples")
        picture = _shot(browser, "dashboard")
    if os.environ.get("STREAMQ_UPDATE_SCREENSHOT") == "1":
        README_PICTURE.parent.mkdir(exist_ok=True)
        shutil.copyfile(picture, README_PICTURE)
