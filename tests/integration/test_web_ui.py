"""The /ui chat page in headless Chromium against real `corral serve` processes: pick the embedded
model, stream an answer with its stats, stop a long answer, render thinking / tool calls / code
safely, pull a model with a progress bar, and the API key prompt (wrong key asks again, the right
one lists the models). Screenshots go to each test's tmp_path.

Needs Debian's `chromium` and `chromium-driver` (`make install` / .ci/run install them as root);
the tests skip, saying so, only when they are absent. No browser is ever downloaded.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from corral.auth.keys import KeyStore
from tests.support import ServerProcess, running_server

pytestmark = pytest.mark.integration

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
MODEL = "smollm2:135m"
if CHROMIUM is None or CHROMEDRIVER is None:
    pytest.skip("Chromium is not installed (apt-get install -y chromium chromium-driver): browser tests skipped",
                allow_module_level=True)

from selenium import webdriver  # noqa: E402  (after the skip: only needed with a browser)
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.remote.webdriver import WebDriver  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402

FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1280,900")


@pytest.fixture
def browser(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[WebDriver]:
    monkeypatch.setenv("SE_OFFLINE", "true")  # never let Selenium Manager reach out for a driver
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'profile'}")
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def wait(driver: WebDriver, until: Callable[[WebDriver], Any], timeout: float = 120) -> Any:
    return WebDriverWait(driver, timeout, poll_frequency=0.1).until(until)


def js(driver: WebDriver, script: str, *args: Any) -> Any:
    return driver.execute_script(script, *args)


def open_page(driver: WebDriver, server: ServerProcess) -> None:
    driver.get(server.url + "/ui/")
    wait(driver, lambda d: d.find_element(By.ID, "model").get_attribute("data-loaded") is not None)


def pick(driver: WebDriver, model: str) -> None:
    Select(driver.find_element(By.ID, "model")).select_by_value(model)


def set_options(driver: WebDriver, **options: Any) -> None:
    driver.find_element(By.ID, "settings-toggle").click()
    for name, value in options.items():
        field = driver.find_element(By.ID, f"opt-{name}")
        field.clear()
        field.send_keys(str(value))
    driver.find_element(By.ID, "settings-toggle").click()


def send(driver: WebDriver, text: str) -> None:
    box = driver.find_element(By.ID, "prompt")
    box.clear()
    box.send_keys(text)
    driver.find_element(By.ID, "send").click()


def last_answer_state(driver: WebDriver) -> str | None:
    state: str | None = js(driver, "const m = [...document.querySelectorAll('.msg.assistant')].at(-1);"
                                   "return m ? m.dataset.state : null;")
    return state


def last_answer_text(driver: WebDriver) -> str:
    text: str = js(driver, "const m = [...document.querySelectorAll('.msg.assistant .content')].at(-1);"
                           "return m ? m.textContent : '';")
    return text


def test_chat_streams_markdown_answer_with_stats(browser: WebDriver, server: ServerProcess, tmp_path: Path) -> None:
    open_page(browser, server)
    options = [o.get_attribute("value") for o in browser.find_elements(By.CSS_SELECTOR, "#model option")]
    assert MODEL in options
    label = browser.find_element(By.CSS_SELECTOR, f'#model option[value="{MODEL}"]').text
    assert "MB" in label and "completion" in label  # size and capabilities (from /api/show)
    pick(browser, MODEL)
    set_options(browser, temperature=0, seed=7, num_predict=24)
    # Watch the answer grow: more than one render before it is done proves it streamed.
    js(browser, "window.__renders = 0; new MutationObserver(() => window.__renders++)"
                ".observe(document.getElementById('messages'), {subtree: true, childList: true});")
    send(browser, "Write a long story about a cat who learns to sail.")
    wait(browser, lambda d: last_answer_state(d) == "done")
    assert last_answer_text(browser).strip()
    assert js(browser, "return window.__renders") >= 3
    stats = browser.find_element(By.CSS_SELECTOR, ".msg.assistant .stats").text
    assert "TTFT" in stats and "tokens/s" in stats and "24 tokens" in stats
    saved = json.loads(js(browser, "return localStorage.getItem('corral.conversations')"))
    assert saved[0]["messages"][0]["content"].startswith("Write a long story") and saved[0]["model"] == MODEL
    # regenerate replaces the answer; edit-and-resend replaces the question and what followed
    browser.find_element(By.ID, "regenerate").click()
    wait(browser, lambda d: last_answer_state(d) == "done")
    assert len(browser.find_elements(By.CSS_SELECTOR, ".msg")) == 2
    browser.find_element(By.CSS_SELECTOR, ".msg.user .edit").click()
    send(browser, "Name two animals.")
    wait(browser, lambda d: last_answer_state(d) == "done")
    users = [e.text for e in browser.find_elements(By.CSS_SELECTOR, ".msg.user .content")]
    assert users == ["Name two animals."] and len(browser.find_elements(By.CSS_SELECTOR, ".msg")) == 2
    # the loaded-models panel says what is loaded and where
    browser.find_element(By.ID, "ps-refresh").click()
    wait(browser, lambda d: MODEL in d.find_element(By.ID, "ps-table").text)
    where = browser.find_element(By.ID, "ps-table").text
    assert "CPU" in where or "GPU" in where
    browser.save_screenshot(str(tmp_path / "chat.png"))


def test_stop_mid_answer(browser: WebDriver, server: ServerProcess, tmp_path: Path) -> None:
    open_page(browser, server)
    pick(browser, MODEL)
    set_options(browser, temperature=0, num_predict=4000)
    send(browser, "Count from 1 to 2000, one number per line.")
    wait(browser, lambda d: len(last_answer_text(d)) > 5)
    assert last_answer_state(browser) == "streaming"
    browser.find_element(By.ID, "stop").click()
    wait(browser, lambda d: last_answer_state(d) == "stopped", timeout=30)
    stopped_at = last_answer_text(browser)
    assert stopped_at and not browser.find_element(By.ID, "send").get_attribute("disabled")
    assert "tokens/s" not in browser.find_element(By.CSS_SELECTOR, ".msg.assistant .stats").text
    browser.save_screenshot(str(tmp_path / "stopped.png"))
    # the server dropped the sequence: a new short answer goes through at once
    set_options(browser, num_predict=8)
    send(browser, "Say hi.")
    wait(browser, lambda d: last_answer_state(d) == "done", timeout=120)
    assert len(browser.find_elements(By.CSS_SELECTOR, ".msg.assistant")) == 2


def test_thinking_tool_calls_and_code_render_safely(browser: WebDriver, server: ServerProcess,
                                                    tmp_path: Path) -> None:
    conversation = [{"id": "c1", "title": "saved", "model": MODEL, "updated": 1, "messages": [
        {"role": "user", "content": "<img src=x onerror=\"window.__xss=1\">"},
        {"role": "assistant", "state": "done", "thinking": "let me *think*",
         "content": "Here:\n```python\ndef f():\n    return 1  # one\n```\n<img src=x onerror=\"window.__xss=2\">",
         "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}],
         "stats": {"ttft_ms": 120, "eval_count": 10, "eval_duration": 500_000_000}}]}]
    browser.get(server.url + "/ui/")
    js(browser, "localStorage.setItem('corral.conversations', arguments[0])", json.dumps(conversation))
    open_page(browser, server)
    wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, ".msg.assistant"))
    details = browser.find_element(By.CSS_SELECTOR, ".msg.assistant details.thinking")
    assert details.get_attribute("open") is None  # folded
    assert browser.find_element(By.CSS_SELECTOR, ".tool-call .tool-name").text == "tool call: get_weather"
    assert '"city": "Paris"' in browser.find_element(By.CSS_SELECTOR, ".tool-call pre").text
    assert browser.find_element(By.CSS_SELECTOR, "pre code .tok-kw").text == "def"
    assert browser.find_element(By.CSS_SELECTOR, "pre code .tok-com").text == "# one"
    assert "20.0 tokens/s" in browser.find_element(By.CSS_SELECTOR, ".msg.assistant .stats").text
    assert js(browser, "return window.__xss") is None
    assert not browser.find_elements(By.CSS_SELECTOR, ".msg img:not(.thumb)")
    browser.save_screenshot(str(tmp_path / "render.png"))


@pytest.fixture
def keyed_server(tmp_path: Path) -> Iterator[tuple[ServerProcess, str]]:
    home = tmp_path / "home"
    _, key = KeyStore(home / "keys.json").create("manage,infer")
    with running_server(home) as srv:
        r = httpx.post(srv.url + "/api/pull", json={"model": MODEL, "stream": False},
                       headers={"Authorization": f"Bearer {key}"}, timeout=300, trust_env=False)
        assert r.status_code == 200, r.text
        yield srv, key


def enter_key(driver: WebDriver, key: str) -> None:
    wait(driver, lambda d: d.find_element(By.ID, "key-dialog").is_displayed(), timeout=30)
    field = driver.find_element(By.ID, "key-input")
    field.clear()
    field.send_keys(key)
    driver.find_element(By.ID, "key-submit").click()


def test_api_key_prompt_and_pull_with_progress(browser: WebDriver, keyed_server: tuple[ServerProcess, str],
                                               tmp_path: Path) -> None:
    server, key = keyed_server
    browser.get(server.url + "/ui/")  # the page itself loads without a key
    wait(browser, lambda d: d.find_element(By.ID, "key-dialog").is_displayed(), timeout=30)
    assert "requires an API key" in browser.find_element(By.ID, "key-message").text
    browser.save_screenshot(str(tmp_path / "key-prompt.png"))
    enter_key(browser, "corral-wrong-key")
    wait(browser, lambda d: "rejected" in d.find_element(By.ID, "key-message").text, timeout=30)
    assert browser.find_element(By.ID, "key-dialog").is_displayed()
    enter_key(browser, key)
    wait(browser, lambda d: d.find_element(By.ID, "model").get_attribute("data-loaded") == "1", timeout=60)
    assert not browser.find_element(By.ID, "key-dialog").is_displayed()
    assert js(browser, "return localStorage.getItem('corral.apiKey')") == key
    # pull a second bundled model, recording every progress update the page shows
    js(browser, """
        window.__pull = [];
        const bar = document.getElementById('pull-progress'), status = document.getElementById('pull-status');
        new MutationObserver(() => window.__pull.push([bar.value, bar.max, status.textContent]))
          .observe(document.getElementById('sidebar'), {subtree: true, attributes: true, childList: true,
                                                         characterData: true});""")
    browser.find_element(By.ID, "pull-name").send_keys("gemma3:270m")
    browser.find_element(By.ID, "pull-button").click()
    wait(browser, lambda d: d.find_element(By.ID, "pull-status").get_attribute("data-state") == "success",
         timeout=300)
    log = js(browser, "return window.__pull")
    partial = [v for v, m, text in log if m > 1 and 0 < v < m and "%" in text]
    assert partial, f"no intermediate progress seen: {log[:5]}...{log[-5:]}"
    assert any(text.startswith("pulling ") for _, _, text in log)
    wait(browser, lambda d: d.find_element(By.ID, "model").get_attribute("data-loaded") == "2", timeout=60)
    options = [o.get_attribute("value") for o in browser.find_elements(By.CSS_SELECTOR, "#model option")]
    assert "gemma3:270m" in options and MODEL in options
    assert browser.find_element(By.ID, "model").get_attribute("value") == "gemma3:270m"  # the pulled one is picked
    browser.save_screenshot(str(tmp_path / "pulled.png"))
