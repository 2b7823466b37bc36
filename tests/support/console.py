"""A gateway process with its console on, an operator and a client to try it with, and a
headless chromium driven by Selenium. Screenshots go to CONSOLE_SCREENSHOTS when it is set
(`make screenshots` sets it to docs/console), else under the test's tmp_path."""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import pytest
from selenium import webdriver
from selenium.common.exceptions import NoSuchElementException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.wait import WebDriverWait

from dispatcher.gateway.v1 import gateway_pb2 as pb
from dispatcher.gateway.v1 import gateway_pb2_grpc as pb_grpc
from dispatcher_gateway.console.operators import hash_password

from .loopback import HOST, RunningSandbox, TlsFiles
from .ports import free_port
from .process import ServerProcess, gateway_env, gateway_process
from .requests import email_request

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
OPERATOR, OPERATOR_PASSWORD = "ops-ada", "correct horse battery staple"
CLIENT, CLIENT_TOKEN = "billing", "dgw_console-test-client-token-0123456789"
WAIT = 20.0
"""Seconds a browser step may take (a page, a live update) on a loaded machine."""
WINDOW = (1280, 860)
AUTH = (("authorization", f"Bearer {CLIENT_TOKEN}"),)


@dataclass
class ConsoleGateway:
    process: ServerProcess
    url: str
    grpc_target: str
    sandbox: RunningSandbox


@pytest.fixture
async def console(
    sandbox: RunningSandbox, tls: TlsFiles, tmp_path: Path
) -> AsyncIterator[ConsoleGateway]:
    operators = tmp_path / "operators"
    operators.write_text(f"{OPERATOR} {hash_password(OPERATOR_PASSWORD)}\n")
    clients = tmp_path / "clients"
    clients.write_text(f"{CLIENT} sha256:{hashlib.sha256(CLIENT_TOKEN.encode()).hexdigest()}\n")
    addr = f"{HOST}:{free_port()}"
    env = {
        **gateway_env(sandbox, tls, tmp_path),
        "GATEWAY_CONSOLE_ADDR": addr,
        "GATEWAY_CONSOLE_OPERATORS_FILE": str(operators),
        "GATEWAY_CLIENT_TOKENS_FILE": str(clients),
    }
    process = gateway_process(env, tmp_path / "gateway.log")
    try:
        await process.start()
        yield ConsoleGateway(process, f"http://{addr}", env["GATEWAY_GRPC_ADDR"], sandbox)
    finally:
        await process.stop()


def dispatch(console: ConsoleGateway) -> str:
    """An e-mail dispatched over gRPC as the client; its job id."""
    with grpc.insecure_channel(console.grpc_target) as channel:
        stub = pb_grpc.DispatchServiceStub(channel)
        return stub.Dispatch(email_request(), metadata=AUTH, timeout=10).job.job_id


def job_state(console: ConsoleGateway, job_id: str) -> int:
    with grpc.insecure_channel(console.grpc_target) as channel:
        stub = pb_grpc.DispatchServiceStub(channel)
        return stub.GetJob(pb.GetJobRequest(job_id=job_id), metadata=AUTH, timeout=10).state


class Browser:
    def __init__(self, driver: WebDriver, shots: Path, base: str = "") -> None:
        self.driver = driver
        self.shots = shots
        self.base = base

    def open(self, path: str) -> None:
        self.driver.get(self.base + path)

    def wait(self, condition: Callable[[WebDriver], object], what: str) -> None:
        WebDriverWait(self.driver, WAIT, poll_frequency=0.1).until(condition, what)

    def find(self, css: str) -> WebElement:
        try:
            return self.driver.find_element(By.CSS_SELECTOR, css)
        except NoSuchElementException:
            # What the browser shows instead says why: an error page, a redirect, a refusal.
            shown = self.driver.execute_script(
                "return document.body ? document.body.innerText : ''"
            )
            raise AssertionError(
                f"no {css} on {self.driver.current_url} ({self.driver.title!r}): {shown[:500]!r}"
            ) from None

    def all(self, css: str) -> list[WebElement]:
        return self.driver.find_elements(By.CSS_SELECTOR, css)

    def texts(self, css: str) -> list[str]:
        """The text of every element `css` selects, read at once: the page's script may swap
        its live part in at any moment, which makes elements found before it stale."""
        found = self.driver.execute_script(
            "return Array.from(document.querySelectorAll(arguments[0]), e => e.textContent)", css
        )
        return [str(text).strip() for text in found]

    def text(self, css: str) -> str:
        return next(iter(self.texts(css)), "")

    def click(self, css: str) -> None:
        """Click the element `css` selects, found and clicked at once (see texts)."""
        clicked = self.driver.execute_script(
            "const e = document.querySelector(arguments[0]); if (e) e.click(); return !!e", css
        )
        assert clicked, f"nothing to click at {css}"

    def mark(self) -> None:
        """Mark this page: `marked` tells whether the browser still shows it (no reload)."""
        self.driver.execute_script("window.consoleTestMark = true")

    def marked(self) -> bool:
        return bool(self.driver.execute_script("return window.consoleTestMark === true"))

    def live(self) -> None:
        """Until the page's event stream is open (what happens next is seen live)."""
        self.wait(lambda d: self.find("body").get_attribute("data-feed") == "open", "live feed")

    def shot(self, name: str) -> None:
        self.driver.save_screenshot(str(self.shots / f"{name}.png"))

    def log_in(self, operator: str, password: str) -> None:
        self.open("/login")
        self.find("input[name=operator]").send_keys(operator)
        self.find("input[name=password]").send_keys(password)
        self.find("#login button").click()

    def cookies(self) -> httpx.Cookies:
        jar = httpx.Cookies()
        for cookie in self.driver.get_cookies():
            jar.set(cookie["name"], cookie["value"])
        return jar


def chromium() -> WebDriver:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in (
        "--headless=new",
        "--no-sandbox",  # root in a container: chromium's own sandbox cannot start
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        f"--window-size={WINDOW[0]},{WINDOW[1]}",
    ):
        options.add_argument(argument)
    return webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Browser]:
    for program in (CHROMIUM, CHROMEDRIVER):
        assert shutil.which(program), f"{program} is missing: run `make browser`"
    shots = Path(os.environ.get("CONSOLE_SCREENSHOTS") or tmp_path / "screenshots")
    shots.mkdir(parents=True, exist_ok=True)
    driver = chromium()
    try:
        yield Browser(driver, shots)
    finally:
        driver.quit()
