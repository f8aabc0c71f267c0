"""The web console in a real headless Chromium (Debian's, driven by Selenium): sign in, balance,
keys, an operator's top-up, the playground's stream and the ledger; CSRF, roles, CSP, languages.
Screenshots of the main pages go to docs/screenshots/."""
from __future__ import annotations

import re

import pytest
import requests
from selenium import webdriver
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as ready
from selenium.webdriver.support.ui import Select, WebDriverWait
from werkzeug import Response

from config.settings import ROOT
from service.db import AIModel, ApiKey, ConsoleSession
from tests.conftest import token
from tests.fakes import openai as fake_openai
from tests.helpers import charges, holds

SHOTS = ROOT / "docs" / "screenshots"


@pytest.fixture
def site(gateway, upstream, live_factory):
    fake = fake_openai.Stream(["Hel", "lo", " from", " the", " playground"])
    upstream.expect_request("/v1/chat/completions").respond_with_handler(
        lambda request: Response(fake.events(), mimetype="text/event-stream"))
    return live_factory(gateway.application)


@pytest.fixture
def browser(tmp_path):
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'chromium'}", "--window-size=1280,900"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def wait(driver, condition, seconds: float = 15):
    # a page being replaced may answer a lookup with "Node ... does not belong to the document"
    # (Chromium 156): polled again, like a missing element; the condition must still come true
    return WebDriverWait(driver, seconds, ignored_exceptions=(WebDriverException,)).until(condition)


def shot(driver, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(SHOTS / f"{name}.png"))


def sign_in(driver, site, credential: str) -> None:
    driver.get(f"{site.url}/console/login")
    driver.find_element(By.ID, "credential").send_keys(credential)
    driver.find_element(By.ID, "sign-in").click()
    wait(driver, ready.presence_of_element_located((By.ID, "balance")))


def sign_out(driver) -> None:
    driver.find_element(By.CSS_SELECTOR, "header form button").click()
    wait(driver, ready.presence_of_element_located((By.ID, "credential")))


def test_a_user_signs_in_and_manages_keys(site, browser):
    browser.get(f"{site.url}/console/login")
    shot(browser, "login")
    sign_in(browser, site, token("alice"))
    assert browser.find_element(By.ID, "balance").text == "100"
    shot(browser, "overview")
    browser.set_window_size(390, 844)  # a phone
    shot(browser, "overview-phone")
    browser.set_window_size(1280, 900)
    cookie = browser.get_cookie("tollgate_console")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    browser.find_element(By.LINK_TEXT, "API keys").click()
    browser.find_element(By.ID, "key-name").send_keys("laptop")
    browser.find_element(By.ID, "create-key").click()
    plain = wait(browser, ready.presence_of_element_located((By.ID, "new-key"))).text
    assert plain.startswith("sk-")
    assert requests.get(f"{site.url}/api/v1/account", headers={"Authorization": f"Bearer {plain}"}).status_code == 200
    shot(browser, "keys")
    browser.find_element(By.CSS_SELECTOR, f"tr[data-prefix='{plain[:7]}'] button.revoke").click()
    wait(browser, ready.presence_of_element_located((By.CSS_SELECTOR, f"tr[data-prefix='{plain[:7]}'] .revoked")))
    assert requests.get(f"{site.url}/api/v1/account", headers={"Authorization": f"Bearer {plain}"}).status_code == 401
    browser.find_element(By.LINK_TEXT, "Models").click()
    assert "m-openai" in browser.find_element(By.ID, "models").text
    shot(browser, "models")


def test_an_operators_top_up_appears_on_the_users_page(site, browser):
    sign_in(browser, site, token("root", admin=True))
    browser.get(f"{site.url}/console/admin/accounts?q=ali")
    browser.find_element(By.LINK_TEXT, "alice").click()
    browser.find_element(By.ID, "amount").send_keys("5.5")
    browser.find_element(By.ID, "note").send_keys("thanks")
    before = browser.find_element(By.ID, "balance")
    browser.find_element(By.CSS_SELECTOR, "#top-up button").click()
    wait(browser, ready.staleness_of(before))  # the page after the post, not the one before
    wait(browser, ready.text_to_be_present_in_element((By.ID, "balance"), "105.5"))
    shot(browser, "admin-account")
    browser.get(f"{site.url}/console/admin/models")
    shot(browser, "admin-catalogue")
    price = browser.find_element(By.CSS_SELECTOR, "form.model-row input[name=cost_per_1k_input_tokens]")
    price.send_keys("-1")  # validated as seed-models validates
    price.submit()
    assert "must not be negative" in wait(browser, ready.presence_of_element_located((By.ID, "error"))).text
    price = browser.find_element(By.CSS_SELECTOR, "form.model-row input[name=cost_per_1k_input_tokens]")
    price.clear()
    price.send_keys("0.5")
    price.submit()
    wait(browser, ready.url_to_be(f"{site.url}/console/admin/models#model-1"))  # back at its row
    assert AIModel.get_by_id(1).cost_per_1k_input_tokens == 500_000
    browser.get(f"{site.url}/console/admin/live")
    assert browser.find_element(By.ID, "ready").text in ("ok", "degraded")
    sign_out(browser)
    sign_in(browser, site, token("alice"))
    assert browser.find_element(By.ID, "balance").text == "105.5"


def test_the_playground_streams_and_the_ledger_shows_the_call(site, browser):
    sign_in(browser, site, token("alice"))
    browser.find_element(By.LINK_TEXT, "Playground").click()
    Select(browser.find_element(By.ID, "model")).select_by_visible_text("m-openai")
    browser.find_element(By.ID, "prompt").send_keys("Say hello")
    browser.find_element(By.ID, "send").click()
    wait(browser, ready.text_to_be_present_in_element((By.ID, "answer"), "Hello from the playground"))
    wait(browser, lambda d: d.find_element(By.ID, "cost").text != "")
    cost = float(browser.find_element(By.ID, "cost").text)
    shot(browser, "playground")
    rows = charges("alice")
    assert len(rows) == 1 and -rows[0].delta == round(cost * 1_000_000) and holds() == 0
    browser.find_element(By.LINK_TEXT, "Ledger").click()
    ledger = browser.find_element(By.ID, "ledger").text
    assert "m-openai" in ledger and "charge" in ledger
    shot(browser, "ledger")


def test_forged_forms_and_foreign_pages_are_refused(site, browser):
    sign_in(browser, site, token("alice"))
    jar = {"tollgate_console": browser.get_cookie("tollgate_console")["value"]}
    forged = requests.post(f"{site.url}/console/keys", data={"name": "evil"}, cookies=jar, allow_redirects=False)
    assert forged.status_code == 403 and ApiKey.select().count() == 0
    wrong = requests.post(f"{site.url}/console/keys", data={"name": "evil", "csrf_token": "guess"}, cookies=jar)
    assert wrong.status_code == 403 and ApiKey.select().count() == 0
    browser.get(f"{site.url}/console/admin/accounts")
    assert "Operators only" in browser.find_element(By.ID, "message").text
    denied = requests.post(f"{site.url}/console/admin/accounts/alice/credits", cookies=jar, data={"amount": "1"})
    assert denied.status_code == 403
    assert requests.get(f"{site.url}/console/", allow_redirects=False).status_code == 302  # no session, no page


def test_headers_languages_and_the_off_switch(site, make_app, live_factory):
    page = requests.get(f"{site.url}/console/login", headers={"Accept-Language": "zh-CN,zh;q=0.9"})
    assert "登录" in page.text and page.headers["X-Frame-Options"] == "DENY"
    csp = page.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "frame-ancestors 'none'" in csp
    assert not re.search(r"<script>(?!</script>)", page.text)  # no inline script anywhere
    visitor = requests.Session()
    form = visitor.get(f"{site.url}/console/login").text
    field = re.search(r'name="csrf_token" value="([^"]+)"', form).group(1)
    bad = visitor.post(f"{site.url}/console/login", data={"credential": "sk-nope", "csrf_token": field})
    assert bad.status_code == 401 and "Invalid API key" in bad.text
    off = live_factory(make_app(CONSOLE_ENABLED=False))
    assert requests.get(f"{off.url}/console/login").status_code == 404


def test_a_sign_in_posted_from_another_site_is_refused(site):
    """Login CSRF: a form on another site signs the victim in as the attacker. Without the
    sign-in form's cookie (SameSite=Strict: never sent from another site), or with a field that
    does not match it, nothing is signed in and no session is written."""
    attacker = token("mallory")
    forged = requests.post(f"{site.url}/console/login", data={"credential": attacker}, allow_redirects=False)
    assert forged.status_code == 403 and "tollgate_console" not in forged.cookies
    guessed = requests.post(f"{site.url}/console/login", data={"credential": attacker, "csrf_token": "x" * 43},
                            cookies={"tollgate_login": "y" * 43}, allow_redirects=False)
    assert guessed.status_code == 403 and ConsoleSession.select().count() == 0
    visitor = requests.Session()  # the real form, cookie and field together: signed in
    field = re.search(r'name="csrf_token" value="([^"]+)"',
                      visitor.get(f"{site.url}/console/login").text).group(1)
    signed = visitor.post(f"{site.url}/console/login", data={"credential": attacker, "csrf_token": field},
                          allow_redirects=False)
    assert signed.status_code == 302 and ConsoleSession.select().count() == 1
