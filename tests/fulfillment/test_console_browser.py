"""The operators' console in a real browser: Debian's chromium driven by selenium through
chromium-driver, against a live service (uvicorn on 127.0.0.1) holding real shipments — one
programmed by the station daemon on a virtual key, one failed, several waiting.

One browser session for the module (signed in once); every page is loaded, acted on (filter,
search, edit, delete, mark shipped and delivered) and checked for what it shows, and a
screenshot of each page at 1280x800 and at phone width is saved under the test run's temp
folder (printed at the end of the module).
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import httpx
import pytest
from shipments import post_each

from station.customer.orders import seal_item
from station.fulfillment.client import FulfillmentClient
from station.fulfillment.embedded import EmbeddedService
from station.fulfillment.runner import RunOptions, Station
from station.fulfillment.store import Role, Store

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.common.exceptions import (  # noqa: E402
    NoSuchElementException,
    StaleElementReferenceException,
    TimeoutException,
)
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402

CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER),
                                reason="needs Debian's chromium and chromium-driver (scripts/setup --test)")

OPTIONS = {"rp": {"id": "acme.okta.com", "name": "Acme"}, "user": {"id": "dXNlcg", "name": "u", "displayName": "U"},
           "challenge": "Y2hhbGxlbmdlY2hhbGxlbmdl", "pubKeyCredParams": [{"type": "public-key", "alg": -7}]}
DESKTOP = {"width": 1280, "height": 800, "deviceScaleFactor": 1, "mobile": False}
PHONE = {"width": 390, "height": 844, "deviceScaleFactor": 1, "mobile": True}
PEOPLE = [("Grace", "Hopper", "US", "NY"), ("Alan", "Turing", "GB", ""), ("Katherine", "Johnson", "US", "VA"),
          ("Edsger", "Dijkstra", "NL", "")]


class Floor:
    """The live service and what it holds."""

    def __init__(self, service: EmbeddedService, store: Store) -> None:
        self.service, self.store, self.url = service, store, service.url
        self.customer = store.create_token(Role.CUSTOMER, "acme")
        self.station = store.create_token(Role.STATION, "floor-1")
        self.operator = store.create_token(Role.OPERATOR, "ops-jane")
        self.jwes: list[str] = []  # every request and response JWE the service holds
        self.programmed = ""
        self.failed = ""
        self.waiting: dict[str, str] = {}  # last name → shipment id

    def api(self, method: str, path: str, token: str, **kwargs) -> httpx.Response:
        return httpx.request(method, self.url + path, headers={"Authorization": f"Bearer {token}"},
                             timeout=10, **kwargs)


def _body(sealed, first, last, country, region) -> dict:
    from station.customer.orders import shipment_body

    body = shipment_body([sealed], email=f"{first.lower()}@acme.example")
    body["recipient"].update(recipient_firstname=first, recipient_lastname=last)
    body["mailing_address"].update(country_code_2=country, region=region)
    return body


@pytest.fixture(scope="module")
def floor(tmp_path_factory, keystore) -> Floor:
    folder = tmp_path_factory.mktemp("console")
    store = Store.open(f"sqlite:///{folder}/station.db")
    service = EmbeddedService(store, keystore, purge_interval=None).start()
    floor = Floor(service, store)
    with FulfillmentClient(service.url, floor.customer) as customer:
        jwks = customer.jwks("transport")
        # one shipment programmed by the real daemon on a fresh virtual key
        sealed = seal_item(transport_jwks=jwks, options=[OPTIONS])
        [floor.programmed] = post_each(customer, [sealed])
        floor.jwes += [sealed.pin_request_jwe, *sealed.credential_request_jwes]
        opts = RunOptions(service=service.url, token=floor.station, spec=f"virtual:{folder}/vkeys/",
                          keys_dir=keystore.path, journal_dir=folder / "journal", profile="yubikey-5-nfc-5.7",
                          until_empty=True, poll_seconds=0.05, heartbeat_seconds=5)
        assert Station(opts).run() == 1
        product = customer.get_shipment(floor.programmed).shipment_items[0].product_data[0]
        floor.jwes += [product.fido_pin_response, *product.fido_credential_responses]
        # one that fails on a key that was not fresh
        sealed = seal_item(transport_jwks=jwks, options=[OPTIONS])
        floor.failed = customer.post_shipment(_body(sealed, "Ada", "Lovelace", "GB", "")).shipment_id
        floor.jwes += [sealed.pin_request_jwe, *sealed.credential_request_jwes]
        with FulfillmentClient(service.url, floor.station) as station:
            claimed = station.claim()
            station.submit(claimed.item_id, serial_number="27182818",
                           error={"error_code": "device_not_fresh", "error_message": "the key already holds a PIN"})
        for first, last, country, region in PEOPLE:
            sealed = seal_item(transport_jwks=jwks, options=[OPTIONS])
            floor.waiting[last] = customer.post_shipment(_body(sealed, first, last, country, region)).shipment_id
            floor.jwes += [sealed.pin_request_jwe, *sealed.credential_request_jwes]
    yield floor
    service.stop()
    store.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("console-screenshots")
    yield folder
    print(f"\nconsole screenshots: {folder}")


@pytest.fixture(scope="module")
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1280,1000", "--lang=en-US", "--no-first-run"):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
    driver.set_page_load_timeout(30)
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", DESKTOP)  # a 1280x800 viewport
    yield driver
    driver.quit()


class Console:
    """The browser on the console, with helpers that wait for conditions, never for time."""

    def __init__(self, driver, floor: Floor, shots: Path) -> None:
        self.driver, self.floor, self.shots = driver, floor, shots

    def open(self, path: str) -> None:
        self.driver.get(self.floor.url + "/console" + path)

    def text(self) -> str:
        return self.driver.find_element(By.TAG_NAME, "body").text

    def find(self, css: str):
        return self.driver.find_element(By.CSS_SELECTOR, css)

    def rows(self, table: str) -> list[str]:
        return [row.text for row in self.driver.find_elements(By.CSS_SELECTOR, f"table#{table} tbody tr")]

    def submit(self, form_css: str) -> None:
        old = self.find("body")
        self.find(f"{form_css} button[type=submit]").click()
        WebDriverWait(self.driver, 15).until(lambda d: _stale(old))

    def shot(self, name: str, *, phone: bool = True) -> None:
        """Screenshots of the current page at 1280x800 and at phone width (390 px)."""
        assert self.driver.execute_script("return [innerWidth, innerHeight]") == [1280, 800]
        self.driver.save_screenshot(str(self.shots / f"{name}-1280x800.png"))
        if phone:
            self.driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", PHONE)
            try:
                self.driver.refresh()
                width = self.driver.execute_script("return document.documentElement.clientWidth")
                assert width == PHONE["width"]
                scroll = self.driver.execute_script("return document.documentElement.scrollWidth")
                assert scroll <= PHONE["width"], f"{name}: the page is {scroll} px wide on a phone"
                self.driver.save_screenshot(str(self.shots / f"{name}-phone.png"))
            finally:
                self.driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", DESKTOP)
                self.driver.refresh()

    def no_secret_shown(self) -> None:
        source = self.driver.page_source
        assert not any(jwe in source for jwe in self.floor.jwes)
        assert not re.search(r"[A-Za-z0-9_-]{20,}\.[A-Za-z0-9_-]*\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.", source)
        assert "fido_pin" not in source and "pin_request" not in source


def _stale(element) -> bool:
    try:
        element.is_enabled()
        return False
    except Exception:  # StaleElementReferenceException: the page was replaced
        return True


@pytest.fixture(scope="module")
def console(browser, floor, shots) -> Console:
    return Console(browser, floor, shots)


# -- the tests, in the order an operator would go ------------------------------------------


def test_sign_in_takes_only_an_operator_token(console):
    console.open("/shipments")  # not signed in: sent to the sign-in page, coming back after
    assert "/console/login" in console.driver.current_url
    console.shot("login")
    console.find("#token").send_keys(console.floor.customer)
    console.submit("form")
    assert "not an operator token" in console.text()
    console.find("#token").send_keys("a-token-nobody-made")
    console.submit("form")
    assert "not known" in console.text()
    console.find("#token").send_keys(console.floor.operator)
    console.submit("form")
    assert console.driver.current_url.endswith("/console/shipments")
    assert "ops-jane" in console.find("header").text
    cookie = console.driver.get_cookie("station_console")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/console"
    assert console.floor.operator not in str(console.driver.get_cookies())


def test_shipments_list_filters_and_searches(console):
    floor = console.floor
    console.open("/shipments")
    rows = console.rows("shipments")
    assert len(rows) == 6
    assert "Dijkstra" in rows[0] and "102" in rows[-1]  # newest first; the programmed one is oldest
    assert "acme" in console.find(".tenants").text and "6 shipments" in console.find(".tenants").text
    console.no_secret_shown()
    console.shot("shipments")
    Select(console.find("select[name=state]")).select_by_value("100")
    console.submit("form.filters")
    assert len(console.rows("shipments")) == 4 and "state=100" in console.driver.current_url
    Select(console.find("select[name=state]")).select_by_value("8")
    console.submit("form.filters")
    [row] = console.rows("shipments")
    assert "Lovelace" in row and "8" in row
    Select(console.find("select[name=state]")).select_by_value("")
    search = console.find("input[name=q]")
    search.send_keys("HOPPER")
    console.submit("form.filters")
    [row] = console.rows("shipments")
    assert "Grace Hopper" in row and floor.waiting["Hopper"][:8] in row
    console.shot("shipments-search", phone=False)
    console.open("/shipments?q=nobody-at-all")
    assert console.rows("shipments") == [] and "No shipment matches" in console.text()


def test_a_shipments_timeline_shows_station_slot_key_and_firmware(console):
    floor = console.floor
    console.open(f"/shipments/{floor.programmed}")
    text = console.text()
    assert "102 · programmed" in text
    timeline = console.find("ol.timeline").text
    assert "received" in timeline and "claimed by station floor-1" in timeline
    assert re.search(r"programmed by floor-1 on key \d+, firmware 5\.7\.\d", timeline)
    key = console.find("dl.item").text
    assert re.search(r"Serial\s+\d{6,}", key) and re.search(r"Firmware\s+5\.7\.\d", key)
    assert re.search(r"Attempts\s+1", key)
    assert console.driver.find_elements(By.ID, "edit") == []  # locked: no edit, no delete
    assert console.find("#ship-form")
    console.no_secret_shown()
    console.shot("shipment-programmed")


def test_edit_a_shipment_until_it_is_locked(console):
    floor = console.floor
    shipment_id = floor.waiting["Turing"]
    console.open(f"/shipments/{shipment_id}")
    first = console.find("input[name=recipient_firstname]")
    first.clear()
    first.send_keys("Alan M.")
    city = console.find("input[name=city]")
    city.clear()
    city.send_keys("Wilmslow")
    Select(console.find("select[name=delivery_type]")).select_by_value("2")
    console.submit("#edit-form")
    assert "Shipment updated." in console.text()
    assert "Alan M. Turing" in console.text() and "Wilmslow" in console.text() and "expedited" in console.text()
    assert "edited by ops-jane" in console.find("ol.timeline").text
    got = floor.api("GET", f"/v1/fpr/shipments/{shipment_id}", floor.customer).json()
    assert got["recipient"]["recipient_firstname"] == "Alan M." and got["delivery_type"] == 2
    assert got["mailing_address"]["city"] == "Wilmslow"
    # the same limits as the API: a US address needs a region
    country = console.find("input[name=country_code_2]")
    country.clear()
    country.send_keys("US")
    console.find("input[name=region]").clear()
    console.submit("#edit-form")
    assert "region is required" in console.find(".error").text
    assert floor.api("GET", f"/v1/fpr/shipments/{shipment_id}", floor.customer).json()["mailing_address"]["country_code_2"] == "GB"
    console.shot("shipment-edit")


def test_delete_a_shipment(console):
    floor = console.floor
    shipment_id = floor.waiting["Dijkstra"]
    console.open(f"/shipments/{shipment_id}")
    console.submit("#delete-form")  # not confirmed: nothing happens
    assert "Tick the box" in console.text()
    console.find("#confirm-delete").click()
    console.submit("#delete-form")
    assert console.driver.current_url.split("?")[0].endswith("/console/shipments")
    assert "Shipment deleted" in console.text()
    assert not any("Dijkstra" in row for row in console.rows("shipments"))
    assert floor.api("GET", f"/v1/fpr/shipments/{shipment_id}", floor.customer).status_code == 404
    console.open(f"/shipments/{shipment_id}")
    assert "no such shipment" in console.text()


def test_mark_shipped_then_delivered(console):
    floor = console.floor
    console.open(f"/shipments/{floor.programmed}")
    console.find("#tracking_number").send_keys("1Z999AA10123456784")
    console.submit("#ship-form")
    assert "Shipment state set." in console.text()
    assert "103 · shipped" in console.text() and "1Z999AA10123456784" in console.text()
    got = floor.api("GET", f"/v1/fpr/shipments/{floor.programmed}", floor.customer).json()
    assert got["shipment_state"]["shipment_state_id"] == 103 and got["tracking_number"] == "1Z999AA10123456784"
    console.shot("shipment-shipped", phone=False)
    console.submit("#deliver-form")
    assert "104 · delivered" in console.text()
    assert "set to 104 (delivered) by ops-jane" in console.find("ol.timeline").text
    assert floor.api("GET", f"/v1/fpr/shipments/{floor.programmed}", floor.customer).json()[
        "shipment_state"]["shipment_state_id"] == 104


def test_stations_and_slots_live(console):
    floor = console.floor
    hopper = floor.waiting["Hopper"]
    item = floor.api("GET", f"/v1/operator/shipments/{hopper}", floor.operator).json()["items"][0]["item_id"]
    report = {"version": "0.1.0", "items_done": 1, "slots": [
        {"slot": 1, "state": "waiting_touch", "item": item, "shipment": hopper,
         "model": "YubiKey 5 NFC", "serial": "31415926", "device": "pcsc:Virtual PCD 00 00"},
        {"slot": 2, "state": "waiting_key"}]}
    assert floor.api("POST", "/v1/station/status", floor.station, json=report).status_code == 204
    console.open("/stations?refresh=0")  # paused, for a steady look and the screenshots
    assert console.driver.find_elements(By.CSS_SELECTOR, "meta[http-equiv=refresh]") == []
    assert "refresh paused" in console.text()
    station = console.find("#station-1")
    assert "floor-1" in station.text and "reporting" in station.text
    slots = [row.text for row in station.find_elements(By.CSS_SELECTOR, "tbody tr")]
    assert "waiting touch" in slots[0] and "31415926" in slots[0] and "waiting key" in slots[1]
    console.shot("stations")
    console.driver.find_element(By.LINK_TEXT, "resume").click()  # the page follows the floor again
    assert console.find("meta[http-equiv=refresh]").get_attribute("content") == "5"
    report["slots"][0] = {"slot": 1, "state": "remove_key"}
    assert floor.api("POST", "/v1/station/status", floor.station, json=report).status_code == 204
    try:
        WebDriverWait(console.driver, 20, poll_frequency=0.5,
                      ignored_exceptions=(NoSuchElementException, StaleElementReferenceException)).until(
            lambda d: "remove key" in d.find_element(By.CSS_SELECTOR, "#station-1 tbody tr").text)
    except TimeoutException:
        pytest.fail("the stations page did not refresh itself within 20 s")


def test_failed_items_say_what_to_do(console):
    console.open("/failed")
    [row] = console.rows("failed")
    assert "device_not_fresh" in row and "27182818" in row and "floor-1" in row
    assert "station reset --device SPEC --yes" in row
    console.find("table#failed a").click()
    assert "8 · processing error" in console.text() and "What to do" in console.text()
    console.no_secret_shown()
    console.open("/failed")
    console.shot("failed")


def test_the_audit_log_filters_by_event(console):
    console.open("/audit")
    text = console.text()
    for event in ("claimed", "fulfilled", "failed", "edited", "deleted", "state"):
        assert event in text, event
    Select(console.find("select[name=event]")).select_by_value("state")
    console.submit("form.filters")
    rows = console.rows("audit")
    assert len(rows) == 2 and all("ops-jane" in r for r in rows)
    assert {r.split()[-1] for r in rows} == {"103", "104"}
    console.no_secret_shown()
    console.open("/audit")
    console.shot("audit")


def test_forms_without_the_csrf_token_or_from_another_site_are_refused(console):
    floor = console.floor
    cookie = console.driver.get_cookie("station_console")["value"]
    target = floor.waiting["Johnson"]
    with httpx.Client(base_url=floor.url, cookies={"station_console": cookie}) as client:
        page = client.get(f"/console/shipments/{target}")
        assert page.status_code == 200 and page.headers["content-security-policy"].startswith("default-src 'none'")
        csrf = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)
        for data, headers in (({"confirm": "yes"}, {}), ({"confirm": "yes", "csrf": "forged"}, {}),
                              ({"confirm": "yes", "csrf": csrf}, {"Origin": "https://evil.example"})):
            refused = client.post(f"/console/shipments/{target}/delete", data=data, headers=headers)
            assert refused.status_code == 403, refused.text
    assert floor.api("GET", f"/v1/fpr/shipments/{target}", floor.customer).status_code == 200
    with httpx.Client(base_url=floor.url) as stranger:  # no session: sent to sign in
        answer = stranger.post(f"/console/shipments/{target}/delete", data={"confirm": "yes", "csrf": csrf})
        assert answer.status_code == 303 and "/console/login" in answer.headers["location"]


def test_sign_out_ends_the_session(console):
    console.open("/shipments")
    console.submit("form.signout")
    assert "Signed out." in console.text() and "/console/login" in console.driver.current_url
    console.open("/audit")
    assert "/console/login" in console.driver.current_url
