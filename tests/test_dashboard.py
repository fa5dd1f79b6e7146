"""The dashboard in a real headless Chromium (Debian's, through its chromedriver and Selenium),
served by a real `plait serve` on a SQLite file (and, for the cluster view, by `plait serve
--runner` beside real runner processes on PostgreSQL), asserting on what the page shows.

A screenshot of each view is kept in `test-artifacts/dashboard/` (not committed). `./dev
setup` installs Chromium when it can; where it is missing these tests are skipped, saying so.
"""

from __future__ import annotations

import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from selenium import webdriver
from selenium.common.exceptions import (
    NoSuchElementException,
    StaleElementReferenceException,
    TimeoutException,
)
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import Select, WebDriverWait

from tests import http_workflows as wf
from tests.cli_support import ROOT, Served, serve_runner, start_serving
from tests.http_support import free_ports
from tests.test_cluster import LEASE_SECONDS, SHARDS, Cluster

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
ARTIFACTS = ROOT / "test-artifacts" / "dashboard"


pytestmark = pytest.mark.skipif(
    not (CHROMIUM.exists() and CHROMEDRIVER.exists()),
    reason=(
        "Debian's chromium and chromium-driver are not installed, and `./dev setup` could not "
        "install them (it needs root and apt-get): apt-get install chromium chromium-driver"
    ),
)


@pytest.fixture
def browser() -> Iterator[WebDriver]:
    """Headless Chromium with a fresh profile, kept off the network beyond loopback."""
    profile = tempfile.mkdtemp(prefix="plait-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (
        "--headless=new",
        "--no-sandbox",  # tests run as root
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1400,1000",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(flag)
    # The driver is Debian's, matched to its Chromium: nothing is looked up or downloaded.
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    server = start_serving(f"sqlite://{tmp_path / 'plait.db'}")
    try:
        yield server
    finally:
        if server.process.poll() is None:
            assert server.stop() == 0


def screenshot(driver: WebDriver, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    assert driver.save_screenshot(str(ARTIFACTS / f"{name}.png"))


def wait_for(driver: WebDriver, condition: Callable[[WebDriver], Any], what: str) -> Any:
    try:
        # The page redraws as it refreshes: an element read mid-redraw is stale, not absent.
        return WebDriverWait(
            driver,
            15,
            poll_frequency=0.05,
            ignored_exceptions=(NoSuchElementException, StaleElementReferenceException),
        ).until(condition)
    except TimeoutException:
        screenshot(driver, f"failed-{what.replace(' ', '-')}")
        logs = driver.get_log("browser") if hasattr(driver, "get_log") else []
        raise AssertionError(f"the page never showed {what}; browser log: {logs}") from None


def rows(driver: WebDriver) -> list[tuple[str, str, str]]:
    """The executions table: (id, workflow, status) per row."""
    found = []
    for row in driver.find_elements(By.CSS_SELECTOR, "#executions tbody tr"):
        found.append(
            (
                row.get_attribute("data-id") or "",
                row.find_element(By.CSS_SELECTOR, "td.workflow").text,
                row.find_element(By.CSS_SELECTOR, "td.status-cell").text,
            )
        )
    return found


def counts(driver: WebDriver) -> dict[str, str]:
    chips = driver.find_elements(By.CSS_SELECTOR, "#counts a")
    return {
        chip.get_attribute("data-status") or "all": chip.find_element(
            By.CSS_SELECTOR, ".count"
        ).text
        for chip in chips
    }


def events(driver: WebDriver) -> list[tuple[str, str, str]]:
    """The timeline: (kind, name, outcome) per event, read again if it redrew meanwhile."""
    for _ in range(20):
        try:
            return _events(driver)
        except StaleElementReferenceException:
            continue
    return _events(driver)


def _events(driver: WebDriver) -> list[tuple[str, str, str]]:
    found = []
    for item in driver.find_elements(By.CSS_SELECTOR, "#timeline li"):
        outcome = item.find_elements(By.CSS_SELECTOR, ".outcome")
        found.append(
            (
                item.get_attribute("data-kind") or "",
                item.find_element(By.CSS_SELECTOR, ".name").text,
                outcome[0].text if outcome else "",
            )
        )
    return found


def order(order_id: str, amount_cents: int) -> dict[str, Any]:
    return {"order_id": order_id, "email": "ops@example.org", "amount_cents": amount_cents}


def seed(url: str) -> dict[str, str]:
    """Executions of every status, through the proxy: their ids by name."""
    ids: dict[str, str] = {}
    with httpx.Client(base_url=url, timeout=30) as http:
        for name, amount in [("paid", 4999), ("declined", 0), ("bug", 13), ("paid-2", 100)]:
            http.post("/httpprocessorder", json=order(name, amount))
            ids[name] = wf.ProcessOrder.execution_id(order(name, amount))
        for name in ("approval", "to-interrupt"):
            started = http.post("/httpprocessorder/discard", json=order(name, 250_000))
            ids[name] = started.headers["plait-execution-id"]
        held = http.post("/hold/discard", json={"key": "dashboard"})  # runs until the end
        ids["held"] = held.headers["plait-execution-id"]
        deadline = time.monotonic() + 30
        for name in ("approval", "to-interrupt"):
            while http.get(f"/executions/{ids[name]}").json()["status"] != "suspended":
                assert time.monotonic() < deadline, f"{name} never suspended"
                time.sleep(0.02)
        assert http.post(f"/executions/{ids['to-interrupt']}/interrupt").status_code == 204
        while http.get(f"/executions/{ids['to-interrupt']}").json()["status"] != "interrupted":
            assert time.monotonic() < deadline, "never interrupted"
            time.sleep(0.02)
    return ids


def test_the_executions_list_filters_and_counts(browser: WebDriver, served: Served) -> None:
    ids = seed(served.url)
    browser.get(f"{served.url}/dashboard")
    wait_for(browser, lambda d: len(rows(d)) == 7, "seven executions")
    wait_for(browser, lambda d: counts(d).get("all") == "7", "the counts")
    assert counts(browser) == {
        "all": "7",
        "running": "1",
        "suspended": "1",
        "succeeded": "2",
        "failed": "2",
        "interrupted": "1",
    }
    shown = {row[0]: row for row in rows(browser)}
    assert shown[ids["held"]] == (ids["held"], "Hold", "running")
    assert shown[ids["paid"]][1:] == ("HttpProcessOrder", "succeeded")
    assert shown[ids["declined"]][2] == "failed"
    assert shown[ids["to-interrupt"]][2] == "interrupted"
    assert rows(browser)[0][0] == ids["held"]  # newest first
    declined_error = browser.find_element(
        By.CSS_SELECTOR, f'tr[data-id="{ids["declined"]}"] td.error'
    )
    assert declined_error.text == "CardDeclined"
    bug_error = browser.find_element(By.CSS_SELECTOR, f'tr[data-id="{ids["bug"]}"] td.error')
    assert "unlucky amount" in bug_error.text
    screenshot(browser, "01-executions")

    # A status count filters the list to that status.
    browser.find_element(By.CSS_SELECTOR, '#counts a[data-status="failed"]').click()
    wait_for(browser, lambda d: len(rows(d)) == 2, "the two failed executions")
    assert {row[0] for row in rows(browser)} == {ids["declined"], ids["bug"]}
    assert "status=failed" in browser.current_url
    selected = browser.find_element(By.CSS_SELECTOR, "#counts a.selected")
    assert selected.get_attribute("data-status") == "failed"
    screenshot(browser, "02-failed")

    # The filter form: a workflow, and a time range that holds nothing.
    browser.find_element(By.ID, "clear").click()
    wait_for(browser, lambda d: len(rows(d)) == 7, "every execution again")
    workflow = browser.find_element(By.ID, "filter-workflow")
    workflow.send_keys("Hold")
    browser.find_element(By.ID, "apply").click()
    wait_for(browser, lambda d: [r[1] for r in rows(d)] == ["Hold"], "the Hold execution alone")
    assert counts(browser)["all"] == "1"
    Select(browser.find_element(By.ID, "filter-status")).select_by_visible_text("succeeded")
    browser.find_element(By.ID, "apply").click()
    wait_for(browser, lambda d: d.find_element(By.ID, "empty").is_displayed(), "no match")
    assert rows(browser) == []
    screenshot(browser, "03-no-match")

    # A link to a filtered view shows the same filtered view.
    browser.get(f"{served.url}/dashboard?workflow=HttpProcessOrder&status=succeeded")
    wait_for(browser, lambda d: len(rows(d)) == 2, "the two succeeded orders")
    assert {row[0] for row in rows(browser)} == {ids["paid"], ids["paid-2"]}
    assert browser.find_element(By.ID, "filter-workflow").get_attribute("value") == (
        "HttpProcessOrder"
    )


def test_an_execution_s_timeline_and_actions(browser: WebDriver, served: Served) -> None:
    ids = seed(served.url)
    browser.get(f"{served.url}/dashboard")
    wait_for(browser, lambda d: len(rows(d)) == 7, "the executions")
    link = browser.find_element(By.CSS_SELECTOR, f'tr[data-id="{ids["paid"]}"] td.id a')
    link.click()
    wait_for(browser, lambda d: len(events(d)) == 3, "the timeline of the paid order")
    assert events(browser) == [
        ("started", "HttpProcessOrder", ""),
        ("activity", "HttpCharge", "success"),
        ("completed", "HttpProcessOrder", "success"),
    ]
    assert browser.find_element(By.ID, "ex-status").text == "succeeded"
    assert browser.find_element(By.ID, "ex-id").text == ids["paid"]
    assert '"order_id": "paid"' in browser.find_element(By.ID, "ex-payload").text
    assert '"charge_id": "ch_paid"' in browser.find_element(By.ID, "ex-outcome").text
    assert browser.current_url.endswith(f"/dashboard/executions/{ids['paid']}")
    actions = browser.find_elements(By.CSS_SELECTOR, "#actions button")
    assert not any(button.is_displayed() for button in actions)  # complete: nothing to do
    screenshot(browser, "04-timeline-succeeded")

    # A suspended one, opened by the search box: its wait, then cancelled from the page.
    search: WebElement = browser.find_element(By.ID, "search-id")
    search.send_keys(ids["approval"])
    browser.find_element(By.CSS_SELECTOR, "#search button").click()
    wait_for(
        browser,
        lambda d: d.find_element(By.ID, "ex-status").text == "suspended",
        "the suspended order",
    )
    assert events(browser)[-1][0] == "suspended"
    assert browser.find_element(By.CSS_SELECTOR, 'button[data-action="resume"]').is_displayed()
    screenshot(browser, "05-timeline-suspended")
    browser.find_element(By.CSS_SELECTOR, 'button[data-action="cancel"]').click()
    wait_for(
        browser,
        lambda d: d.find_element(By.ID, "ex-status").text == "interrupted",
        "the order interrupted",
    )
    assert events(browser)[-1] == ("completed", "HttpProcessOrder", "failure")
    assert '"_tag": "Interrupt"' in browser.find_element(By.ID, "ex-outcome").text
    screenshot(browser, "06-timeline-cancelled")

    # An id nothing is stored under: the page says so.
    browser.get(f"{served.url}/dashboard/executions/{'0' * 32}")
    error = wait_for(
        browser, lambda d: d.find_element(By.ID, "error").text or None, "the unknown id"
    )
    assert "UnknownExecutionError" in error
    screenshot(browser, "07-unknown")

    # Back to the list from the execution view.
    browser.find_element(By.ID, "back").click()
    wait_for(browser, lambda d: len(rows(d)) == 7, "the list again")


def test_with_a_token_the_page_asks_for_it(browser: WebDriver, tmp_path: Path) -> None:
    token = uuid.uuid4().hex
    server = start_serving(f"sqlite://{tmp_path / 'plait.db'}", "--token", token)
    try:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            headers = {"authorization": f"Bearer {token}"}
            assert http.get("/executions").status_code == 401
            assert http.get("/dashboard").status_code == 200  # the page holds no data
            http.post("/hold/discard", json={"key": "token"}, headers=headers)
        browser.get(f"{server.url}/dashboard")
        form = wait_for(
            browser, lambda d: d.find_element(By.ID, "token-form").is_displayed(), "the form"
        )
        assert form
        screenshot(browser, "08-token")
        browser.find_element(By.ID, "token").send_keys(token)
        browser.find_element(By.CSS_SELECTOR, "#token-form button").click()
        wait_for(browser, lambda d: len(rows(d)) == 1, "the execution, once given the token")
        assert rows(browser)[0][1:] == ("Hold", "running")
    finally:
        assert server.stop() == 0


def test_artifacts_are_not_committed() -> None:
    ignored = (ROOT / ".gitignore").read_text().split()
    assert "/test-artifacts/" in ignored


# The cluster view ---------------------------------------------------------------------------


def runner_rows(driver: WebDriver) -> list[tuple[str, str, str, str]]:
    """The runners table: (address, shard count, entities, whether it is this proxy's)."""
    return [
        (
            row.get_attribute("data-address") or "",
            row.find_element(By.CSS_SELECTOR, "td.shard-count").text,
            row.find_element(By.CSS_SELECTOR, "td.count").text,
            row.get_attribute("data-this") or "",
        )
        for row in driver.find_elements(By.CSS_SELECTOR, "#runners tbody tr")
    ]


def entity_counts(driver: WebDriver) -> dict[str, str]:
    return {
        row.get_attribute("data-type") or "": row.find_element(By.CSS_SELECTOR, "td.count").text
        for row in driver.find_elements(By.CSS_SELECTOR, "#entity-counts tbody tr")
    }


def test_on_a_single_engine_the_cluster_view_says_there_is_none(
    browser: WebDriver, tmp_path: Path
) -> None:
    server = start_serving(f"sqlite://{tmp_path / 'plait.db'}", module="tests.http_entities")
    try:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            for counter in ("c-1", "c-2", "c-3"):
                assert http.post(f"/httpcounter/get/{counter}").status_code == 200
            assert http.post("/httpgate/wait/g-1/discard", json="never").status_code == 204
        browser.get(f"{server.url}/dashboard")
        wait_for(browser, lambda d: d.find_element(By.ID, "list-view").is_displayed(), "the list")
        browser.find_element(By.ID, "nav-cluster").click()
        wait_for(
            browser, lambda d: d.find_element(By.ID, "no-cluster").is_displayed(), "no cluster"
        )
        assert browser.current_url.endswith("/dashboard/cluster")
        assert "single engine" in browser.find_element(By.ID, "no-cluster").text
        assert not browser.find_element(By.ID, "runners-section").is_displayed()
        wait_for(browser, lambda d: entity_counts(d) == {"HttpCounter": "3", "HttpGate": "1"},
                 "the entity counts")  # fmt: skip
        assert browser.find_element(By.ID, "entities-where").text == "in this engine"
        screenshot(browser, "09-cluster-single-engine")
        # Back to the executions from the navigation.
        browser.find_element(By.ID, "nav-executions").click()
        wait_for(browser, lambda d: d.find_element(By.ID, "list-view").is_displayed(), "the list")
        assert not browser.find_element(By.ID, "cluster-view").is_displayed()
    finally:
        assert server.stop() == 0


def test_on_a_cluster_the_view_shows_the_runners_their_shards_and_entities(
    browser: WebDriver, postgres_url: str, tmp_path: Path
) -> None:
    # Runners listen at their address: ports free now, not fixed ones (see test_http_cluster).
    mine, *workers = free_ports(3)
    me = f"127.0.0.1:{mine}"
    cluster = Cluster(postgres_url, tmp_path)
    served: Served | None = None
    try:
        for port in workers:
            cluster.start(port)
        served = serve_runner(postgres_url, me, tmp_path, LEASE_SECONDS)
        with httpx.Client(base_url=served.url, timeout=60) as http:
            deadline = time.monotonic() + 60
            while True:
                view = http.get("/cluster").json()
                held = sum(len(runner["shards"]) for runner in view["assignments"])
                if view["healthyRunners"] == 3 and len(view["assignments"]) == 3:
                    own = next(r for r in view["assignments"] if r["this"])
                    if held == SHARDS and len(view["shards"]) == len(own["shards"]):
                        break
                assert time.monotonic() < deadline, f"the cluster never settled: {view}"
                time.sleep(0.1)
            for n in range(30):
                deposit = {"key": f"d{n}", "amount": 1}
                assert http.post(f"/clusteraccount/deposit/acct-{n}", json=deposit).json() == 1
            view = http.get("/cluster").json()
        shards = {runner["address"]: str(len(runner["shards"])) for runner in view["assignments"]}
        resident = str(view["entities"])
        assert view["entityTypes"] == {"ClusterAccount": view["entities"]}
        assert view["entities"] > 0  # some of the 30 accounts are this runner's

        browser.get(f"{served.url}/dashboard/cluster")
        wait_for(browser, lambda d: len(runner_rows(d)) == 3, "the three runners")
        assert browser.find_element(By.ID, "cl-address").text == me
        assert browser.find_element(By.ID, "cl-runners").text == "3 registered, 3 healthy"
        assert browser.find_element(By.ID, "cl-fenced").text == "0"
        rows = {row[0]: row for row in runner_rows(browser)}
        assert set(rows) == {me, *(f"127.0.0.1:{port}" for port in workers)}
        for address, row in rows.items():
            assert row[1] == shards[address]
            assert row[3] == str(address == me).lower()
            # This proxy's runner shows its count now; the others theirs as of their last
            # heartbeat (it may have moved since /cluster was read).
            assert row[2] == resident if address == me else row[2].isdigit()
        this = browser.find_element(By.CSS_SELECTOR, '#runners tr[data-this="true"]')
        assert "this proxy" in this.text
        ids = this.find_element(By.CSS_SELECTOR, "td.shard-ids").text
        assert ids.startswith("default:")
        assert entity_counts(browser) == {"ClusterAccount": resident}
        assert browser.find_element(By.ID, "entities-where").text == "on this runner"
        assert not browser.find_element(By.ID, "no-cluster").is_displayed()
        screenshot(browser, "10-cluster-three-runners")

        # A runner leaves: the view, redrawn every two seconds, follows the shards.
        cluster.stop(workers[1])
        wait_for(browser, lambda d: len(runner_rows(d)) == 2, "two runners")
        wait_for(
            browser,
            lambda d: sum(int(row[1]) for row in runner_rows(d)) == SHARDS,
            "every shard on the two runners",
        )
        screenshot(browser, "11-cluster-after-a-leave")
    finally:
        if served is not None and served.process.poll() is None:
            assert served.stop() == 0
        cluster.close()
