"""What users see of a sweep in MLflow's UI, checked in a real browser: a real ``mlflow server`` on a
store holding a small ``engage run -m`` sweep, opened in headless Chromium through selenium.

The page must show the parent run and its distinctly named children, a child's simulation table
(a column per parameter) and its sampled-points plot. Screenshots go to ``ENGAGE_SCREENSHOT_DIR``
when it is set (``make docs-screenshots`` copies them into ``docs/images/``), else to a temporary
folder. Debian's ``chromium`` and ``chromium-driver`` come from ``make system-deps``; the test skips
only where they cannot be installed (not root)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--window-size=1600,900",
]
#: a sweep of two jobs over the learning rate, a few seconds of online training each
SWEEP = [
    "-m",
    "experiment=heat_quick",
    "simulator.grid=8",
    "simulator.steps=10",
    "data.simulations=4",
    "data.val_simulations=1",
    "data.batches_per_epoch=4",
    "data.batch_size=8",
    "trainer.max_epochs=1",
    "model.width=8",
    "model.lr=0.001,0.003",
    "logger.experiment=ui-check",
]
#: the screenshots, as the MLflow UI tutorial shows them
SCREENSHOTS = ("mlflow-sweep-runs.png", "mlflow-simulation-table.png", "mlflow-sampled-points.png")
WAIT_S = 30

pytestmark = pytest.mark.slow


def _browser_or_skip() -> None:
    if CHROMIUM.exists() and CHROMEDRIVER.exists():
        return
    if os.geteuid() != 0:
        pytest.skip("Debian's chromium and chromium-driver are not installed and cannot be as a non-root user")
    pytest.fail("chromium or chromium-driver missing: run `make system-deps` as root")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def sweep_store():
    """A SQLite store holding one ``engage run -m`` sweep (a parent run and two children), in a
    folder whose name the screenshots may show."""
    _browser_or_skip()
    folder = Path(tempfile.mkdtemp(prefix="engage-ui-"))
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "ENGAGE_"))}
    done = subprocess.run(
        [sys.executable, "-m", "engage.core.cli", "run", *SWEEP],
        cwd=folder,
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    yield folder / "mlflow.db"
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def mlflow_server(sweep_store):
    """``mlflow server`` on the sweep's store, on a loopback port; its URL."""
    port = _free_port()
    store = ["--backend-store-uri", f"sqlite:///{sweep_store}", "--workers", "1"]
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", *store, "--host", "127.0.0.1", "--port", str(port)],
        cwd=sweep_store.parent,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    try:
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"mlflow server did not start: {server.stderr.read()[-2000:]}")
            time.sleep(0.3)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium with a fresh profile."""
    _browser_or_skip()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="engage-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in [*CHROMIUM_FLAGS, f"--user-data-dir={profile}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture
def screenshots(tmp_path) -> Path:
    folder = os.environ.get("ENGAGE_SCREENSHOT_DIR")
    if not folder:
        return tmp_path
    Path(folder).mkdir(parents=True, exist_ok=True)
    return Path(folder)


def _runs(store: Path):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{store}")
    experiment = client.get_experiment_by_name("ui-check")
    runs = client.search_runs([experiment.experiment_id])
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = sorted((r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id), key=_name)
    return experiment.experiment_id, parent, children


def _name(run) -> str:
    return run.info.run_name


def test_the_mlflow_ui_shows_the_sweep_its_simulations_and_sampled_points(
    sweep_store, mlflow_server, browser, screenshots
):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as shown
    from selenium.webdriver.support.ui import WebDriverWait

    experiment_id, parent, children = _runs(sweep_store)
    assert len(children) == 2 and len({_name(c) for c in children}) == 2, [_name(c) for c in children]
    wait = WebDriverWait(browser, WAIT_S)

    def text_shown(text: str):
        return wait.until(shown.visibility_of_element_located((By.XPATH, f"//*[text()={_xpath_string(text)}]")))

    def close_assistant():
        for button in browser.find_elements(By.XPATH, "//button[@aria-label='Close']"):
            if button.is_displayed():
                button.click()

    def widen_run_names():
        # the names in full on the screenshot: drag the edge of the Run Name column
        header = browser.find_element(By.XPATH, "//div[@role='columnheader'][contains(@col-id, 'Run Name')]")
        edge = header.find_element(By.CSS_SELECTOR, ".ag-header-cell-resize")
        ActionChains(browser).drag_and_drop_by_offset(edge, 260, 0).perform()

    # the experiment's runs, as "Model training" shows them: the sweep, then its children expanded
    browser.get(f"{mlflow_server}/#/experiments/{experiment_id}?workflowType=machine_learning")
    name = text_shown(_name(parent))
    close_assistant()
    row = name.find_element(By.XPATH, "./ancestor::div[@role='gridcell']")
    row.find_element(By.XPATH, ".//button").click()
    widen_run_names()
    for child in children:
        text_shown(_name(child))
    browser.save_screenshot(str(screenshots / SCREENSHOTS[0]))

    # a child's simulation table: one column per parameter, each simulation's status
    child = children[0]
    run_page = f"{mlflow_server}/#/experiments/{experiment_id}/runs/{child.info.run_id}"
    browser.get(f"{run_page}/artifacts/online/simulations.json?workflowType=machine_learning")
    for column in ("simulation_id", "T_top", "status", "mean_train_loss"):
        text_shown(column)
    assert browser.find_elements(By.XPATH, "//*[text()='finished']"), "no finished simulation in the table"
    close_assistant()
    browser.save_screenshot(str(screenshots / SCREENSHOTS[1]))

    # the sampled points, coloured by training loss
    text_shown("sampled_points_by_loss.png").click()
    image = wait.until(
        shown.visibility_of_element_located((By.XPATH, "//img[@alt='online/sampled_points_by_loss.png']"))
    )
    wait.until(lambda _: browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth", image))
    assert image.size["width"] > 200, image.size
    browser.save_screenshot(str(screenshots / SCREENSHOTS[2]))
    for shot in SCREENSHOTS:
        assert (screenshots / shot).stat().st_size > 10_000, shot


def _xpath_string(text: str) -> str:
    """``text`` as an XPath string literal (run names hold no quote of both kinds)."""
    return f'"{text}"' if '"' not in text else f"'{text}'"
