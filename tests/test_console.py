"""The web console in a real headless Chromium (Debian's, driven by Selenium): sign in, balance,
keys, an operator's top-up, the playground's stream and the ledger; CSRF, roles, CSP, languages;
then each finding of issue 32's "the console in a real browser", one test each.
Screenshots of the main pages go to docs/screenshots/."""
from __future__ import annotations

import re
import threading

import pytest
import requests
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as ready
from selenium.webdriver.support.ui import Select
from werkzeug import Response

from service.money import billing
from service.store.db import AIModel, ApiKey, ConsoleSession, LedgerEntry
from tests.browser import shot, wait
from tests.browser import sign_in as sign_in_at
from tests.conftest import auth, token
from tests.fakes import openai as fake_openai
from tests.helpers import account, charges, holds



@pytest.fixture
def site(gateway, upstream, live_factory):
    fake = fake_openai.Stream(["Hel", "lo", " from", " the", " playground"])
    upstream.expect_request("/v1/chat/completions").respond_with_handler(
        lambda request: Response(fake.events(), mimetype="text/event-stream"))
    return live_factory(gateway.application)


def sign_in(driver, site, credential: str) -> None:
    sign_in_at(driver, site.url, credential)


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


# issue 32: the console in a real browser


def stream_on_gate(upstream, gate: threading.Event) -> None:
    """The fake provider sends a first word, then the rest once `gate` is set."""
    def handler(request):
        def events():
            yield fake_openai.chunk({"role": "assistant", "content": "first"})
            gate.wait(60)  # a bound for a test that fails, never reached by one that passes
            yield fake_openai.chunk({"content": " then done"}, finish="stop")
            yield fake_openai.chunk({}, usage={"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6},
                                    choices=False)
            yield b"data: [DONE]\n\n"
        return Response(events(), mimetype="text/event-stream")

    upstream.clear_all_handlers()
    upstream.expect_request("/v1/chat/completions").respond_with_handler(handler)


def test_send_stays_disabled_while_an_answer_streams(site, upstream, browser):
    gate = threading.Event()
    stream_on_gate(upstream, gate)
    sign_in(browser, site, token("alice"))
    browser.get(f"{site.url}/console/playground")
    Select(browser.find_element(By.ID, "model")).select_by_visible_text("m-openai")
    browser.find_element(By.ID, "prompt").send_keys("Say hello")
    send = browser.find_element(By.ID, "send")
    send.click()
    wait(browser, ready.text_to_be_present_in_element((By.ID, "answer"), "first"))
    assert not send.is_enabled()
    browser.execute_script("document.getElementById('playground').requestSubmit()")  # Enter, a second click
    gate.set()
    wait(browser, lambda d: d.find_element(By.ID, "playground").get_attribute("data-done") == "1")
    assert browser.find_element(By.ID, "answer").text == "first then done" and send.is_enabled()
    assert len(upstream.log) == 1 and len(charges("alice")) == 1


def test_a_refresh_after_create_key_makes_no_second_key(site, browser):
    sign_in(browser, site, token("alice"))
    browser.get(f"{site.url}/console/keys")
    browser.find_element(By.ID, "key-name").send_keys("laptop")
    browser.find_element(By.ID, "create-key").click()
    plain = wait(browser, ready.presence_of_element_located((By.ID, "new-key"))).text
    assert browser.current_url == f"{site.url}/console/keys"  # the POST answered with a redirect
    browser.refresh()
    wait(browser, ready.presence_of_element_located((By.ID, "keys")))
    assert ApiKey.select().count() == 1 and plain.startswith("sk-")
    assert not browser.find_elements(By.ID, "new-key")  # shown once


def test_an_account_named_with_a_slash_has_a_working_operator_link(site, browser):
    assert requests.get(f"{site.url}/api/v1/account", headers=auth("org/research")).status_code == 200
    sign_in(browser, site, token("root", admin=True))
    browser.get(f"{site.url}/console/admin/accounts?q=org")
    browser.find_element(By.LINK_TEXT, "org/research").click()
    assert wait(browser, ready.presence_of_element_located((By.TAG_NAME, "h1"))).text == "org/research"
    browser.find_element(By.ID, "amount").send_keys("2")
    browser.find_element(By.CSS_SELECTOR, "#top-up button").click()
    wait(browser, ready.text_to_be_present_in_element((By.ID, "balance"), "2"))
    assert account("org/research").balance == 2_000_000
    assert requests.get(f"{site.url}/api/v1/account", headers=auth("x/../alice")).status_code == 200
    browser.get(f"{site.url}/console/admin/accounts?q=x/")
    browser.find_element(By.LINK_TEXT, "x/../alice").click()  # its own page, not alice's
    assert wait(browser, ready.presence_of_element_located((By.TAG_NAME, "h1"))).text == "x/../alice"
    browser.get(f"{site.url}/console/admin/accounts/nobody")
    assert "No such page" in browser.find_element(By.ID, "message").text  # a page, not raw JSON


def row_input(browser, model_id: int, name: str):
    return browser.find_element(By.CSS_SELECTOR, f"#model-{model_id} input[name={name}]")


def test_catalogue_errors_stay_on_their_row_as_typed(site, browser):
    sign_in(browser, site, token("root", admin=True))
    browser.get(f"{site.url}/console/admin/models")
    row_input(browser, 3, "cost_per_1k_output_tokens").send_keys("0.7")
    base = row_input(browser, 3, "cost_per_1k_tokens")
    base.clear()  # the model must not silently become free
    browser.execute_script("arguments[0].removeAttribute('required')", base)  # as a script-less client posts it
    base.submit()
    error = wait(browser, ready.presence_of_element_located((By.CSS_SELECTOR, "#model-3 #error")))
    assert "base price" in error.text and browser.current_url.endswith("#model-3")
    assert row_input(browser, 3, "cost_per_1k_output_tokens").get_attribute("value") == "0.7"  # kept
    assert AIModel.get_by_id(3).cost_per_1k_tokens == 1_000_000
    fallbacks = row_input(browser, 2, "fallbacks")
    fallbacks.send_keys("m-opnai")  # misspelt
    fallbacks.submit()
    assert "m-opnai" in wait(browser, ready.presence_of_element_located((By.CSS_SELECTOR, "#model-2 #error"))).text
    assert AIModel.get_by_id(2).fallbacks == []
    fallbacks = row_input(browser, 2, "fallbacks")
    fallbacks.clear()
    fallbacks.send_keys("m-openai")
    fallbacks.submit()
    wait(browser, ready.url_to_be(f"{site.url}/console/admin/models#model-2"))
    assert AIModel.get_by_id(2).fallbacks == ["m-openai"]


def test_top_ups_show_as_positive_with_note_operator_and_the_estimate_legend(site, upstream, browser):
    unreported = fake_openai.Stream(["no", " usage"], usage=False)  # the charge is estimated
    upstream.clear_all_handlers()
    upstream.expect_request("/v1/chat/completions").respond_with_handler(unreported.handler)
    assert requests.post(f"{site.url}/v1/chat/completions", headers=auth("alice"), json={
        "model": "m-openai", "stream": True, "messages": [{"role": "user", "content": "hi"}]}).status_code == 200
    sign_in(browser, site, token("root", admin=True))
    browser.get(f"{site.url}/console/admin/accounts/alice")
    browser.find_element(By.ID, "amount").send_keys("5.5")
    browser.find_element(By.ID, "note").send_keys("thanks for the report")
    browser.find_element(By.CSS_SELECTOR, "#top-up button").click()
    wait(browser, ready.text_to_be_present_in_element((By.CSS_SELECTOR, "#ledger tr.row-topup"), "thanks"))
    sign_out(browser)
    sign_in(browser, site, token("alice"))
    browser.get(f"{site.url}/console/ledger")
    top_up = browser.find_element(By.CSS_SELECTOR, "#ledger tr.row-topup")
    assert top_up.find_element(By.CLASS_NAME, "amount").text == "+5.5"
    assert top_up.find_element(By.CLASS_NAME, "note").text == "thanks for the report"
    assert top_up.find_element(By.CLASS_NAME, "operator").text == "root"
    charge = browser.find_element(By.CSS_SELECTOR, "#ledger tr.row-charge .amount").text
    assert charge.startswith("−") and charge.endswith("*")
    assert "estimated" in browser.find_element(By.ID, "legend").text
    assert LedgerEntry.get(LedgerEntry.note == "thanks for the report").operator == "root"


def test_account_and_ledger_lists_page(site, browser):
    for i in range(105):
        billing.account(f"user{i:03d}")
    for i in range(55):
        billing.credit(account("alice").id, 1_000_000, f"gift {i}")
    sign_in(browser, site, token("root", admin=True))
    browser.get(f"{site.url}/console/admin/accounts")
    first = browser.find_elements(By.CSS_SELECTOR, "#accounts tbody tr")
    browser.find_element(By.ID, "next").click()
    wait(browser, ready.staleness_of(first[0]))
    second = [r.text for r in browser.find_elements(By.CSS_SELECTOR, "#accounts tbody tr")]
    assert len(first) == 100 and len(second) == 107 - 100 and "user104" in second[-1]  # alice, root, 105 users
    sign_out(browser)
    sign_in(browser, site, token("alice"))
    browser.get(f"{site.url}/console/ledger")
    newest = browser.find_elements(By.CSS_SELECTOR, "#ledger tbody tr")
    browser.find_element(By.ID, "older").click()
    wait(browser, ready.staleness_of(newest[0]))
    older = [r.text for r in browser.find_elements(By.CSS_SELECTOR, "#ledger tbody tr")]
    assert len(newest) == 50 and len(older) == 56 - 50 and not browser.find_elements(By.ID, "older")
    assert "gift 0" in older[-2]  # the oldest gifts, then alice's first top-up


def test_the_spend_chart_has_every_day_an_axis_dates_and_values(site, browser):
    sign_in(browser, site, token("alice"))
    browser.get(f"{site.url}/console/playground")
    browser.find_element(By.ID, "prompt").send_keys("Say hello")
    browser.find_element(By.ID, "send").click()
    wait(browser, lambda d: d.find_element(By.ID, "playground").get_attribute("data-done") == "1")
    browser.get(f"{site.url}/console/")
    days = browser.find_elements(By.CSS_SELECTOR, "#spend-chart g.day")
    assert len(days) == 30 and sum(d.get_attribute("data-cost") == "0" for d in days) == 29  # empty days kept
    assert len(browser.find_elements(By.CSS_SELECTOR, "#spend-chart line.axis")) == 2
    spent = charges("alice")[0]
    today = days[-1]
    assert today.get_attribute("data-day") == spent.created.date().isoformat()
    assert today.find_element(By.CSS_SELECTOR, "text.value").text == today.get_attribute("data-cost") != "0"
    dates = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#spend-chart text.date")]
    assert len(dates) >= 6 and all(re.fullmatch(r"\d\d-\d\d", d) for d in dates)
    assert browser.find_element(By.CSS_SELECTOR, "#spend-chart text.y-max").text == today.get_attribute("data-cost")
    shot(browser, "overview-chart")


def test_tables_scroll_on_a_phone_with_a_hint(site, browser):
    sign_in(browser, site, token("alice"))
    browser.set_window_size(390, 844)
    browser.get(f"{site.url}/console/keys")
    box = browser.find_element(By.CSS_SELECTOR, ".scroll")
    assert browser.execute_script("return arguments[0].scrollWidth > arguments[0].clientWidth", box)
    assert browser.execute_script("return document.documentElement.scrollWidth <= window.innerWidth")
    assert browser.find_element(By.CSS_SELECTOR, ".scroll-hint").is_displayed()
    shot(browser, "keys-phone")
    browser.set_window_size(1280, 900)
    assert not browser.find_element(By.CSS_SELECTOR, ".scroll-hint").is_displayed()


def test_holds_show_model_age_and_time_zone_and_readiness_reads_as_text(site, upstream, browser):
    gate = threading.Event()
    stream_on_gate(upstream, gate)
    sign_in(browser, site, token("root", admin=True))
    call = requests.post(f"{site.url}/v1/chat/completions", headers=auth("alice"), stream=True, json={
        "model": "m-openai", "stream": True, "messages": [{"role": "user", "content": "hi"}]})
    chunks = call.iter_content(32)  # kept: a dropped iterator closes the connection, ending the call
    next(chunks)  # the call is in flight: its hold is taken
    browser.get(f"{site.url}/console/admin/live")
    held = browser.find_element(By.CSS_SELECTOR, "#holds tbody tr")
    assert held.find_element(By.CLASS_NAME, "model").text == "m-openai" and "alice" in held.text
    assert re.fullmatch(r"\d+ s", held.find_element(By.CLASS_NAME, "age").text)
    assert held.find_element(By.CLASS_NAME, "expires").text.endswith(" UTC")
    checks = browser.find_element(By.ID, "checks").text
    assert "Database" in checks and "Open circuit breakers" in checks
    assert "{" not in checks and "}" not in checks and "'" not in checks  # not a Python dict
    shot(browser, "admin-live")
    gate.set()
    assert b"".join(chunks).endswith(b"data: [DONE]\n\n")
    for i in range(105):  # more holds than a page
        billing.hold(account("alice").id, f"held-{i:03d}", 1, 60)
    browser.get(f"{site.url}/console/admin/live")
    assert len(browser.find_elements(By.CSS_SELECTOR, "#holds tbody tr")) == 100
    browser.find_element(By.ID, "older-holds").click()
    wait(browser, lambda d: "held-000" in d.find_element(By.ID, "holds").text)


def test_chinese_is_complete_and_switched_on_the_page(site, upstream, browser):
    sign_in(browser, site, token("root", admin=True))
    browser.find_element(By.ID, "language").click()
    wait(browser, ready.text_to_be_present_in_element((By.TAG_NAME, "nav"), "概览"))
    assert browser.find_element(By.ID, "language").text == "English"
    browser.get(f"{site.url}/console/models")
    header = browser.find_element(By.CSS_SELECTOR, "#models thead").text
    assert "输入" in header and "推理" in header and "input" not in header  # token classes
    assert "词元" in browser.page_source and "令牌" not in browser.page_source  # LLM tokens are not API keys
    browser.get(f"{site.url}/console/admin/models")
    assert "基础价格" in browser.find_element(By.ID, "model-1").text  # field names
    base = row_input(browser, 1, "cost_per_1k_tokens")
    base.clear()
    browser.execute_script("arguments[0].removeAttribute('required')", base)
    base.submit()
    assert "基础价格" in wait(browser, ready.presence_of_element_located((By.ID, "error"))).text  # errors
    browser.get(f"{site.url}/console/admin/live")
    checks = browser.find_element(By.ID, "checks").text
    assert "数据库" in checks and "已启用 4 个模型" in checks and "正常" in checks  # readiness
    browser.get(f"{site.url}/console/admin/accounts/alice")
    browser.find_element(By.ID, "amount").send_keys("-1000")
    browser.find_element(By.CSS_SELECTOR, "#top-up button").click()
    assert "更正不能使余额低于冻结金额" in wait(browser, ready.presence_of_element_located((By.ID, "error"))).text
    ledger = browser.find_element(By.ID, "ledger").text  # alice's, on the page the error came back on
    assert "充值" in ledger and "词元" in ledger
    shot(browser, "ledger-zh")
    browser.get(f"{site.url}/console/keys")
    browser.find_element(By.ID, "key-rpm").send_keys("many")
    browser.find_element(By.ID, "create-key").click()
    assert wait(browser, ready.presence_of_element_located((By.ID, "error"))).text == "每分钟请求数必须是正整数"
    assert browser.find_element(By.ID, "key-rpm").get_attribute("value") == "many"  # as typed
    browser.find_element(By.ID, "language").click()
    wait(browser, ready.text_to_be_present_in_element((By.TAG_NAME, "nav"), "Overview"))
    assert browser.current_url == f"{site.url}/console/keys"  # the switch keeps the page


def test_the_site_icon_is_served_and_console_pages_carry_no_cors(site, browser):
    sign_in(browser, site, token("alice"))
    browser.get(f"{site.url}/console/ledger")
    missing = [e["message"] for e in browser.get_log("browser") if "404" in e["message"]]
    assert not missing
    icon = requests.get(f"{site.url}/favicon.ico")
    assert icon.status_code == 200 and icon.content[:4] == b"\x00\x00\x01\x00"
    origin = {"Origin": "https://elsewhere.example"}
    for path in ("/console/login", "/console/static/console.css"):
        assert "Access-Control-Allow-Origin" not in requests.get(f"{site.url}{path}", headers=origin).headers
    assert "Access-Control-Allow-Origin" in requests.get(f"{site.url}/api/v1/models", headers={**origin, **auth()}
                                                         ).headers  # the API keeps its CORS


# issue 36: the playground's compare mode


class Gated:
    """A fake model that streams its first word at once and the rest once `gate` is set."""

    def __init__(self, first: str, rest: str):
        self.first, self.rest, self.gate = first, rest, threading.Event()

    def handler(self, request):
        def events():
            yield fake_openai.chunk({"role": "assistant", "content": self.first})
            self.gate.wait(60)  # a bound for a test that fails, never reached by one that passes
            yield fake_openai.chunk({"content": self.rest}, finish="stop")
            yield fake_openai.chunk({}, usage={"prompt_tokens": 4, "completion_tokens": 2, "total_tokens": 6},
                                    choices=False)
            yield b"data: [DONE]\n\n"
        return Response(events(), mimetype="text/event-stream")


@pytest.fixture
def trio(gateway, upstream):
    """Rows `fast` (1 credit per 1k), `slow` (2 per 1k: its first word, then the rest once
    `trio.gate` is set) and `broken` (refuses every call), each behind its own path of the fake
    server."""
    for i, (name, price) in enumerate((("fast", "1"), ("slow", "2"), ("broken", "1"))):
        r = gateway.post("/api/admin/models", headers=auth("root", True), json={
            "id": 20 + i, "name": name, "api": "openai", "provider": "openai", "upstream_model": "up",
            "base_url": upstream.url_for(f"/{name}/v1").rstrip("/"), "cost_per_1k_tokens": price,
            "max_output_tokens": 64})
        assert r.status_code == 201
    slow = Gated("Slow", " and steady")
    upstream.expect_request("/fast/v1/chat/completions").respond_with_handler(
        fake_openai.Stream(["Quick", " brown"]).handler)
    upstream.expect_request("/slow/v1/chat/completions").respond_with_handler(slow.handler)
    upstream.expect_request("/broken/v1/chat/completions").respond_with_json(
        {"error": {"message": "broken is down for repairs", "type": "invalid_request_error"}}, status=400)
    return slow


def compare_models(browser, names: list[str], prompt: str = "Name a colour") -> None:
    browser.find_element(By.ID, "compare").click()
    for name in names:
        browser.find_element(By.CSS_SELECTOR, f"input[name=models][value='{name}']").click()
    browser.find_element(By.ID, "prompt").send_keys(prompt)
    browser.find_element(By.ID, "send").click()


def panel(browser, name: str, part: str | None = None):
    found = browser.find_element(By.CSS_SELECTOR, f"#panels .panel[data-model='{name}']")
    return found.find_element(By.CLASS_NAME, part) if part else found


def test_compare_streams_models_side_by_side_each_with_its_cost(site, trio, browser):
    sign_in(browser, site, token("alice"))
    browser.get(f"{site.url}/console/playground")
    compare_models(browser, ["fast", "slow", "broken"])
    wait(browser, lambda d: panel(d, "fast").get_attribute("data-finish") == "stop")
    wait(browser, lambda d: "broken is down for repairs" in panel(d, "broken", "error").text)
    wait(browser, lambda d: panel(d, "slow", "text").text == "Slow")
    # one stream, interleaved: fast answered whole and broken failed while slow had said one word
    assert panel(browser, "fast", "text").text == "Quick brown"
    assert panel(browser, "slow").get_attribute("data-finish") is None
    assert "failed" in panel(browser, "broken").get_attribute("class")
    assert not browser.find_element(By.ID, "send").is_enabled()
    trio.gate.set()
    wait(browser, lambda d: d.find_element(By.ID, "playground").get_attribute("data-done") == "1")
    assert panel(browser, "slow", "text").text == "Slow and steady"
    costs = {name: panel(browser, name, "cost").text for name in ("fast", "slow", "broken")}
    billed = {e.model: e for e in charges("alice")}
    assert sorted(billed) == ["fast", "slow"] and costs["broken"] == "0" and holds() == 0
    assert all(-billed[name].delta == round(float(costs[name]) * 1_000_000) > 0 for name in billed)
    assert billed["slow"].delta < billed["fast"].delta  # its own price, twice fast's, on more tokens
    assert len({e.parallel_group for e in billed.values()}) == 1
    total = float(browser.find_element(By.ID, "total-cost").text)
    assert round(total * 1_000_000) == -sum(e.delta for e in billed.values())
    tops = {name: panel(browser, name).rect for name in ("fast", "slow", "broken")}
    assert tops["fast"]["y"] == tops["slow"]["y"] == tops["broken"]["y"]  # side by side
    assert tops["fast"]["x"] < tops["slow"]["x"] < tops["broken"]["x"]
    shot(browser, "playground-compare")
    browser.set_window_size(390, 844)  # a phone: the panels stack, nothing scrolls sideways
    browser.execute_script("arguments[0].scrollIntoView()", browser.find_element(By.ID, "compared"))
    stacked = [panel(browser, name).rect for name in ("fast", "slow", "broken")]
    assert stacked[0]["x"] == stacked[1]["x"] == stacked[2]["x"]
    assert stacked[0]["y"] < stacked[1]["y"] < stacked[2]["y"]
    assert browser.execute_script("return document.documentElement.scrollWidth <= window.innerWidth")
    shot(browser, "playground-compare-phone")
    browser.set_window_size(1280, 900)
    assert [m["message"] for m in browser.get_log("browser") if m["level"] == "SEVERE"] == []  # CSP kept


def test_compare_refusals_show_on_the_page_in_either_language(site, trio, upstream, browser):
    sign_in(browser, site, token("alice"))
    browser.get(f"{site.url}/console/playground")
    compare_models(browser, ["fast"])
    wait(browser, lambda d: d.find_element(By.ID, "playground").get_attribute("data-done") == "1")
    assert browser.find_element(By.ID, "compare-error").text == "Pick 2 to 4 models to compare"
    assert browser.find_elements(By.CSS_SELECTOR, "#panels .panel") == []
    browser.find_element(By.ID, "language").click()
    wait(browser, ready.text_to_be_present_in_element((By.TAG_NAME, "h1"), "试用"))
    assert "多个模型并排对比" in browser.find_element(By.ID, "playground").text
    compare_models(browser, ["fast", "slow", "broken", "m-openai", "m-ollama"])
    wait(browser, lambda d: d.find_element(By.ID, "playground").get_attribute("data-done") == "1")
    assert browser.find_element(By.ID, "compare-error").text == "请选择 2 到 4 个模型进行对比"
    shot(browser, "playground-compare-zh")
    assert upstream.log == [] and charges("alice") == []
