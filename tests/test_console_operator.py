"""The operator's console pages of issues 34 and 35 in a real headless Chromium: deployments'
state with enable/disable, deployments edited on the catalogue form (validated as `make
seed-models` validates them), and the audit log with its filters and pages."""
from __future__ import annotations

import json

import pytest
import requests
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as ready
from selenium.webdriver.support.ui import Select
from werkzeug import Response

from service.store.db import AIModel, AuditEntry
from service.web import audit
from tests.browser import shot, sign_in, wait
from tests.conftest import auth, token
from tests.fakes import openai as fake_openai

HI = [{"role": "user", "content": "hi"}]


@pytest.fixture
def site(gateway, upstream, live_factory):
    """The gateway served live, with model `pool` (id 60): deployment `east` (priority 0) answers
    429 with Retry-After 600, `west` (priority 1) answers."""
    upstream.expect_request("/east/v1/chat/completions").respond_with_response(Response(
        json.dumps({"error": {"message": "slow down"}}), status=429, headers={"Retry-After": "600"},
        content_type="application/json"))
    upstream.expect_request("/v1/chat/completions").respond_with_json(fake_openai.completion("ok", 10, 5))
    r = gateway.post("/api/admin/models", headers=auth("root", True), json={
        "id": 60, "name": "pool", "api": "openai", "upstream_model": "up", "api_key_env": "FAKE_API_KEY",
        "base_url": upstream.url_for("/v1"), "cost_per_1k_tokens": "1", "max_output_tokens": 64,
        "deployments": [{"name": "east", "base_url": upstream.url_for("/east/v1")},
                        {"name": "west", "priority": 1}]})
    assert r.status_code == 201, r.json
    return live_factory(gateway.application)


def deployment(driver, name: str):
    return driver.find_element(By.CSS_SELECTOR, f"#model-60 tr[data-deployment='{name}']")


def switch(driver, name: str, state: str) -> None:
    """Press a deployment's enable/disable button and wait for the page after the redirect."""
    row = deployment(driver, name)
    row.find_element(By.CSS_SELECTOR, "button.switch").click()
    wait(driver, ready.staleness_of(row))
    wait(driver, lambda d: deployment(d, name).get_attribute("data-state") == state)


def test_deployments_show_their_state_and_switch_off_and_on(site, browser):
    answered = requests.post(f"{site.url}/v1/chat/completions", headers=auth("alice"),
                             json={"model": "pool", "messages": HI})
    assert answered.status_code == 200  # east said 429 and cools down; west answered
    sign_in(browser, site.url, token("root", admin=True))
    browser.find_element(By.LINK_TEXT, "Deployments").click()
    east = wait(browser, lambda d: deployment(d, "east"))
    assert east.get_attribute("data-state") == "cooling" and "cooling" in east.text
    assert east.find_element(By.CLASS_NAME, "cooling-until").text.endswith(" UTC")
    assert east.find_element(By.CLASS_NAME, "errors").text == "1"
    west = deployment(browser, "west")
    assert west.get_attribute("data-state") == "ok" and west.find_element(By.CLASS_NAME, "requests").text == "1"
    assert "m-openai" not in browser.find_element(By.TAG_NAME, "main").text  # a model without deployments
    shot(browser, "admin-deployments")
    switch(browser, "west", "disabled")
    assert [d.get("enabled", True) for d in AIModel.get_by_id(60).deployments] == [True, False]
    refused = requests.post(f"{site.url}/v1/chat/completions", headers=auth("alice"),
                            json={"model": "pool", "messages": HI})
    assert refused.status_code == 429  # east cools, west is off: no deployment can answer
    switch(browser, "west", "ok")
    switch(browser, "east", "disabled")
    switch(browser, "east", "ok")  # enabled again by an operator: its cool-down is over too
    assert [(e.actor, e.action, e.detail["deployment"]) for e in AuditEntry.select().where(
        AuditEntry.action.startswith("deployment.")).order_by(AuditEntry.id)] == [
        ("root", "deployment.disable", "west"), ("root", "deployment.enable", "west"),
        ("root", "deployment.disable", "east"), ("root", "deployment.enable", "east")]
    browser.find_element(By.ID, "language").click()
    wait(browser, ready.text_to_be_present_in_element((By.TAG_NAME, "nav"), "部署"))
    assert deployment(browser, "east").find_element(By.CLASS_NAME, "state").text == "正常"
    assert "停用" in deployment(browser, "east").text


def deployments_field(driver, model_id: int):
    return driver.find_element(By.CSS_SELECTOR, f"#model-{model_id} textarea[name=deployments]")


def post_deployments(driver, model_id: int, text: str) -> None:
    """Type `text` into a row's deployments field, save, and wait for the page that answers."""
    field = deployments_field(driver, model_id)
    field.clear()
    field.send_keys(text)
    field.submit()
    wait(driver, ready.staleness_of(field))  # not the page before the post (it may show the last error)


def test_deployments_are_edited_on_the_catalogue_form_with_seed_models_validation(site, upstream, browser):
    sign_in(browser, site.url, token("root", admin=True))
    browser.get(f"{site.url}/console/admin/models")
    shown = json.loads(deployments_field(browser, 60).get_attribute("value"))
    assert [d["name"] for d in shown] == ["east", "west"]  # a row's deployments, as stored
    post_deployments(browser, 1, '[{"name": "east", "weight": 0}]')
    error = wait(browser, ready.presence_of_element_located((By.CSS_SELECTOR, "#model-1 #error"))).text
    assert "deployments[0].weight must be an integer from 1" in error  # the validator's own words
    assert deployments_field(browser, 1).get_attribute("value") == '[{"name": "east", "weight": 0}]'  # as typed
    post_deployments(browser, 1, '[{"name": "east",')
    error = wait(browser, ready.presence_of_element_located((By.CSS_SELECTOR, "#model-1 #error"))).text
    assert "not valid JSON" in error and "line 1" in error
    post_deployments(browser, 1, '[{"name": "a"}, {"name": "a"}]')
    assert "used twice" in wait(browser, ready.presence_of_element_located((By.CSS_SELECTOR, "#model-1 #error"))).text
    assert AIModel.get_by_id(1).deployments is None and not AuditEntry.select().where(
        AuditEntry.action == "model.update").exists()  # nothing refused was written or audited
    good = [{"name": "primary", "weight": 2}, {"name": "spare", "base_url": upstream.url_for("/v1"), "priority": 1}]
    Select(browser.find_element(By.CSS_SELECTOR, "#model-1 select[name=routing]")).select_by_value("least_busy")
    post_deployments(browser, 1, json.dumps(good))
    wait(browser, ready.url_to_be(f"{site.url}/console/admin/models#model-1"))
    row = AIModel.get_by_id(1)
    assert row.deployments == good and row.routing == "least_busy"
    saved = AuditEntry.get(AuditEntry.action == "model.update")
    assert (saved.actor, saved.target, saved.detail["deployments"]) == ("root", "model:1", good)
    assert json.loads(deployments_field(browser, 1).get_attribute("value")) == good
    answered = requests.post(f"{site.url}/v1/chat/completions", headers=auth("alice"),
                             json={"model": "m-openai", "messages": HI})
    assert answered.status_code == 200  # served by its new deployments
    browser.get(f"{site.url}/console/admin/deployments")
    primary = browser.find_element(By.CSS_SELECTOR, "#model-1 tr[data-deployment='primary']")
    assert primary.find_element(By.CLASS_NAME, "requests").text == "1"
    browser.find_element(By.ID, "language").click()
    wait(browser, ready.text_to_be_present_in_element((By.TAG_NAME, "nav"), "部署"))
    browser.get(f"{site.url}/console/admin/models")
    assert "部署（JSON" in browser.find_element(By.ID, "model-2").text
    post_deployments(browser, 2, '[{"name": "x", "weight": 0}]')
    error = wait(browser, ready.presence_of_element_located((By.CSS_SELECTOR, "#model-2 #error"))).text
    assert "deployments[0].weight必须是 1 到" in error  # the validator's message in Chinese


def test_the_audit_log_lists_top_ups_with_their_note_and_sign_ins(site, browser):
    visitor = requests.Session()  # a refused sign-in, from another client
    form = visitor.get(f"{site.url}/console/login").text
    field = form.split('name="csrf_token" value="')[1].split('"')[0]
    assert visitor.post(f"{site.url}/console/login", data={"credential": "sk-wrong", "csrf_token": field}
                        ).status_code == 401
    sign_in(browser, site.url, token("root", admin=True))
    browser.get(f"{site.url}/console/admin/accounts/alice")
    browser.find_element(By.ID, "amount").send_keys("5.5")
    browser.find_element(By.ID, "note").send_keys("invoice 42")
    before = browser.find_element(By.ID, "balance")
    browser.find_element(By.CSS_SELECTOR, "#top-up button").click()
    wait(browser, ready.staleness_of(before))
    browser.find_element(By.LINK_TEXT, "Audit log").click()
    top_up = wait(browser, ready.presence_of_element_located(
        (By.CSS_SELECTOR, "#audit tr[data-action='credits.topup']")))
    assert top_up.find_element(By.CLASS_NAME, "actor").text == "root"
    assert top_up.find_element(By.CLASS_NAME, "target").text == "account:alice"
    assert top_up.find_element(By.CLASS_NAME, "detail").text == "amount: 5.5, note: invoice 42"
    signed = browser.find_element(By.CSS_SELECTOR, "#audit tr[data-action='console.sign_in']")
    assert signed.find_element(By.CLASS_NAME, "actor").text == "root" and "by: jwt" in signed.text
    assert signed.find_element(By.CLASS_NAME, "ip").text == "127.0.0.1"
    refused = browser.find_element(By.CSS_SELECTOR, "#audit tr[data-action='console.sign_in_failed']")
    assert "by: key" in refused.text and "sk-wrong" not in browser.page_source
    shot(browser, "admin-audit")
    Select(browser.find_element(By.ID, "action")).select_by_value("credits.topup")
    browser.find_element(By.CSS_SELECTOR, "#audit-filter button").click()
    wait(browser, lambda d: "action=credits.topup" in d.current_url)
    actions = {r.get_attribute("data-action") for r in browser.find_elements(By.CSS_SELECTOR, "#audit tbody tr")}
    assert actions == {"credits.topup"}  # alice's 100 by the admin API, and the console's 5.5


def test_the_audit_log_pages_and_keeps_its_filter(site, browser):
    for i in range(60):
        audit.record("bot", "key.create", f"key:{i}", {"n": i}, "10.0.0.1")
    sign_in(browser, site.url, token("root", admin=True))
    browser.get(f"{site.url}/console/admin/audit?actor=bot")
    first = browser.find_elements(By.CSS_SELECTOR, "#audit tbody tr")
    assert len(first) == 50 and first[0].find_element(By.CLASS_NAME, "target").text == "key:59"
    browser.find_element(By.ID, "older").click()
    wait(browser, ready.staleness_of(first[0]))
    rest = [r.find_element(By.CLASS_NAME, "target").text
            for r in browser.find_elements(By.CSS_SELECTOR, "#audit tbody tr")]
    assert rest == [f"key:{i}" for i in range(9, -1, -1)] and not browser.find_elements(By.ID, "older")
    assert browser.find_element(By.ID, "actor").get_attribute("value") == "bot"
