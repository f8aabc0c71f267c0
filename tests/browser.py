"""Debian's headless Chromium driven by Selenium, for the console's browser tests: the driver,
an explicit wait, and signing in through the form."""
from __future__ import annotations

from config.settings import ROOT
from selenium import webdriver
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as ready
from selenium.webdriver.support.ui import WebDriverWait


SHOTS = ROOT / "docs" / "screenshots"  # the main pages, as the browser tests saw them (not committed)


def chromium(profile) -> webdriver.Chrome:
    """A fresh headless Chromium with its profile under `profile` (the caller quits it)."""
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--window-size=1280,900"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # the console's own errors
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    driver.set_page_load_timeout(30)
    return driver


def wait(driver, condition, seconds: float = 15):
    """Until `condition` holds; a node of a page being replaced is looked up again."""
    return WebDriverWait(driver, seconds, ignored_exceptions=(WebDriverException,)).until(condition)


def sign_in(driver, url: str, credential: str) -> None:
    """Sign in on the form at `url` and wait for the overview."""
    driver.get(f"{url}/console/login")
    driver.find_element(By.ID, "credential").send_keys(credential)
    driver.find_element(By.ID, "sign-in").click()
    wait(driver, ready.presence_of_element_located((By.ID, "balance")))


def shot(driver, name: str) -> None:
    """A screenshot of the page as it stands, to docs/screenshots/<name>.png."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(SHOTS / f"{name}.png"))
