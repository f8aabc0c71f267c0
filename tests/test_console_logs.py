"""The console's Logs pages and a key's page (issue 35) in a real headless Chromium: filters
that narrow the rows, cursor paging, a call's detail with its timings and redacted bodies; a
key's budget set on its page and shown with its spend this period; a key session refused when
it would widen its own key's limits."""
from __future__ import annotations

import datetime as dt

import pytest
import requests
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as ready
from selenium.webdriver.support.ui import Select, WebDriverWait
from werkzeug import Response

from service.store.db import ApiKey, RequestLog, utcnow
from tests.conftest import auth, token
from tests.fakes import openai as fake_openai
from tests.helpers import account, charges

HI = [{"role": "user", "content": "hi"}]


@pytest.fixture
def site(gateway, upstream, live_factory):
    fake = fake_openai.Stream(["Hel", "lo", " from", " the", " log"])
    upstream.expect_request("/v1/chat/completions").respond_with_handler(
        lambda request: Response(fake.events(), mimetype="text/event-stream"))
    server = live_factory(gateway.application)
    server.log = gateway.application.extensions["tollgate_log"]
    return server


def wait(driver, condition, seconds: float = 15):
    return WebDriverWait(driver, seconds, ignored_exceptions=(WebDriverException,)).until(condition)


def sign_in(driver, site, credential: str) -> None:
    driver.get(f"{site.url}/console/login")
    driver.find_element(By.ID, "credential").send_keys(credential)
    driver.find_element(By.ID, "sign-in").click()
    wait(driver, ready.presence_of_element_located((By.ID, "balance")))


def call(site, credential_headers: dict, model: str = "m-openai", content: str = "hi") -> requests.Response:
    """A streamed chat call on the live gateway, read to its end (its log row is then queued)."""
    r = requests.post(f"{site.url}/v1/chat/completions", headers=credential_headers, json={
        "model": model, "stream": True, "messages": [{"role": "user", "content": content}]})
    r.content  # noqa: B018 - the whole body: the row is queued when it closes
    return r


def key(site, **limits) -> tuple[int, str]:
    made = requests.post(f"{site.url}/api/admin/keys", headers=auth("root", True),
                         json={"account": "alice", **limits}).json()
    return made["id"], made["key"]


def bearer(plain: str) -> dict:
    return {"Authorization": f"Bearer {plain}"}


def shown_rows(browser) -> list:
    return browser.find_elements(By.CSS_SELECTOR, "#logs tbody tr.call")


def filter_by(browser, **values) -> None:
    """Fill the filter form (inputs set as a user's picker sets them) and submit it."""
    before = browser.find_element(By.ID, "logs")
    for name, value in values.items():
        field = browser.find_element(By.CSS_SELECTOR, f"#log-filters [name={name}]")
        if field.tag_name == "select":
            Select(field).select_by_value(value)
        else:
            browser.execute_script("arguments[0].value = arguments[1]", field, value)
    browser.find_element(By.ID, "filter").click()
    wait(browser, ready.staleness_of(before))


def test_filters_narrow_the_logs_by_model_status_key_and_time(site, browser):
    key_id, plain = key(site, rpm=1)
    assert call(site, auth()).status_code == 200
    assert call(site, bearer(plain)).status_code == 200
    assert call(site, bearer(plain)).status_code == 429  # the key's rpm
    assert call(site, auth(), model="nope").status_code == 404
    alice = ApiKey.get_by_id(key_id).account_id
    RequestLog.create(request_id="req-three-days-ago", account_id=alice, endpoint="chat", model="m-openai",
                      status=200, latency_ms=5, created=utcnow() - dt.timedelta(days=3))
    assert site.log.flush(10)
    sign_in(browser, site, token("alice"))
    browser.find_element(By.LINK_TEXT, "Logs").click()
    assert len(shown_rows(browser)) == 5
    filter_by(browser, model="m-openai")
    rows = shown_rows(browser)
    assert len(rows) == 4 and {r.get_attribute("data-model") for r in rows} == {"m-openai"}
    filter_by(browser, model="", status="429")
    rows = shown_rows(browser)
    assert [(r.get_attribute("data-status"), r.get_attribute("data-key")) for r in rows] == [("429", str(key_id))]
    filter_by(browser, status="", key_id=str(key_id))
    assert sorted(r.get_attribute("data-status") for r in shown_rows(browser)) == ["200", "429"]
    yesterday = (utcnow() - dt.timedelta(days=1)).strftime("%Y-%m-%dT%H:%M")
    filter_by(browser, key_id="", **{"from": yesterday})
    assert len(shown_rows(browser)) == 4 and "req-three-days-ago" not in browser.find_element(By.ID, "logs").text
    filter_by(browser, **{"from": "", "to": yesterday})
    assert [r.find_element(By.CSS_SELECTOR, "a.detail").text for r in shown_rows(browser)] == ["req-three-days-ago"]
    filter_by(browser, to="", status="99")  # out of range: a message on the form, not an error page
    assert "between 100 and 599" in browser.find_element(By.ID, "error").text and not shown_rows(browser)


def test_the_logs_page_pages_by_cursor_and_keeps_its_filters(site, browser):
    alice = account("alice").id
    RequestLog.insert_many([{"request_id": f"req-{i:03d}", "account_id": alice, "endpoint": "chat",
                             "model": "m-other" if i % 12 == 0 else "m-page", "status": 200, "latency_ms": 1}
                            for i in range(60)]).execute()  # 55 m-page rows, 5 m-other between them
    sign_in(browser, site, token("alice"))
    browser.get(f"{site.url}/console/logs?model=m-page")
    first = [r.find_element(By.CSS_SELECTOR, "a.detail").text for r in shown_rows(browser)]
    browser.find_element(By.ID, "older").click()
    wait(browser, ready.url_contains("before="))
    second = [r.find_element(By.CSS_SELECTOR, "a.detail").text for r in shown_rows(browser)]
    assert len(first) == 50 and first[0] == "req-059" and len(second) == 5 and second[-1] == "req-001"
    assert "model=m-page" in browser.current_url and not browser.find_elements(By.ID, "older")
    assert not set(first) & set(second) and all(int(a[4:]) % 12 for a in first + second)
    browser.find_element(By.ID, "newest").click()
    wait(browser, lambda d: "before=" not in d.current_url)
    assert len(shown_rows(browser)) == 50


def test_a_calls_detail_shows_its_timings_and_redacted_bodies(site, browser):
    assert requests.patch(f"{site.url}/api/admin/accounts/alice", headers=auth("root", True),
                          json={"log_bodies": True}).status_code == 200
    secret = "sk-" + "a1B2c3D4" * 5
    answered = call(site, {**auth(), "X-Request-ID": "my-call-1"},
                    content=f"my key is {secret}, mail me at someone@example.com")
    assert answered.status_code == 200
    assert site.log.flush(10)
    sign_in(browser, site, token("alice"))
    browser.get(f"{site.url}/console/logs")
    browser.find_element(By.CSS_SELECTOR, "#logs a.detail").click()
    wait(browser, ready.presence_of_element_located((By.ID, "call")))
    row = RequestLog.get(RequestLog.client_request_id == "my-call-1")
    assert browser.find_element(By.ID, "request-id").text == row.request_id
    assert browser.find_element(By.ID, "latency").text == f"{row.latency_ms} ms"
    assert browser.find_element(By.ID, "upstream").text == f"{row.upstream_ms} ms"
    assert browser.find_element(By.ID, "ttft").text == f"{row.ttft_ms} ms" and row.ttft_ms is not None
    assert browser.find_element(By.ID, "status").text == "200"
    assert browser.find_element(By.ID, "model").text == "m-openai"
    tokens = browser.find_element(By.ID, "tokens").text
    assert f"prompt {row.prompt_tokens}" in tokens and f"completion {row.completion_tokens}" in tokens
    charged = -charges("alice")[0].delta
    assert browser.find_element(By.ID, "cost").text == f"{charged / 1_000_000:g} credits"
    assert browser.find_element(By.ID, "cache-hit").text == "no"
    asked = browser.find_element(By.ID, "request-body").text
    assert "[REDACTED]" in asked and "[EMAIL]" in asked and secret not in asked and "example.com" not in asked
    assert "Hel" in browser.find_element(By.ID, "response-body").text
    assert secret not in browser.page_source


def test_a_keys_budget_set_on_its_page_shows_with_its_spend_this_period(site, browser):
    key_id, plain = key(site, name="ci")
    sign_in(browser, site, token("alice"))
    browser.get(f"{site.url}/console/keys")
    browser.find_element(By.CSS_SELECTOR, f"tr[data-prefix='{plain[:7]}'] a.key-page").click()
    budget = wait(browser, ready.presence_of_element_located((By.ID, "key-budget")))
    assert browser.find_element(By.ID, "budget").text == "none"
    budget.send_keys("5")
    Select(browser.find_element(By.ID, "key-period")).select_by_value("day")
    browser.find_element(By.ID, "save-key").click()
    wait(browser, ready.text_to_be_present_in_element((By.ID, "budget"), "5"))
    assert browser.current_url == f"{site.url}/console/keys/{key_id}"  # POST, redirect, GET
    assert browser.find_element(By.ID, "period").text == "day" and browser.find_element(By.ID, "spent").text == "0"
    assert ApiKey.get_by_id(key_id).budget == 5_000_000
    assert call(site, bearer(plain)).status_code == 200
    charged = -charges("alice")[0].delta
    browser.refresh()
    spent = wait(browser, ready.presence_of_element_located((By.ID, "spent"))).text
    assert spent == f"{charged / 1_000_000:g}" != "0"
    today = browser.find_elements(By.CSS_SELECTOR, "#key-chart g.day")[-1]
    assert today.get_attribute("data-cost") == spent and today.get_attribute("data-day") == utcnow().date().isoformat()
    browser.get(f"{site.url}/console/keys")
    listed = browser.find_element(By.CSS_SELECTOR, f"tr[data-prefix='{plain[:7]}']")
    assert listed.find_element(By.CLASS_NAME, "budget").text == "5 / day"
    assert listed.find_element(By.CLASS_NAME, "spent").text == spent


def test_a_key_session_may_not_widen_its_own_limits(site, browser):
    key_id, plain = key(site, rpm=5, max_concurrent=2, models=["m-openai"])
    sign_in(browser, site, plain)
    browser.get(f"{site.url}/console/keys/{key_id}")
    rpm = browser.find_element(By.ID, "key-rpm")
    assert rpm.get_attribute("value") == "5"
    rpm.clear()
    rpm.send_keys("10")
    browser.find_element(By.ID, "save-key").click()
    error = wait(browser, ready.presence_of_element_located((By.ID, "error"))).text
    assert "at most 5" in error and browser.find_element(By.ID, "key-rpm").get_attribute("value") == "10"
    models = browser.find_element(By.ID, "key-models")
    models.clear()
    models.send_keys("m-openai, m-gemini")
    browser.find_element(By.ID, "key-rpm").clear()
    shown = browser.find_element(By.ID, "error")
    browser.find_element(By.ID, "save-key").click()
    wait(browser, ready.staleness_of(shown))
    assert "m-gemini" in browser.find_element(By.ID, "error").text
    row = ApiKey.get_by_id(key_id)
    assert (row.rpm, row.max_concurrent, row.models) == (5, 2, ["m-openai"])
    models = browser.find_element(By.ID, "key-models")
    models.clear()
    models.send_keys("m-openai")
    browser.find_element(By.ID, "key-rpm").send_keys("3")  # narrower: saved
    form = browser.find_element(By.ID, "key-form")
    browser.find_element(By.ID, "save-key").click()
    wait(browser, ready.staleness_of(form))
    assert not browser.find_elements(By.ID, "error") and ApiKey.get_by_id(key_id).rpm == 3
    assert browser.find_element(By.ID, "key-rpm").get_attribute("value") == "3"
