"""The MLflow UI served by `iclf ui`, opened in headless Chromium: the sweep's run table counts the
parent and every trial, a trial's page shows its metrics, and the parent's artifacts show the summary
report. Marked `browser`; runs where Chromium is installed (Debian: `apt-get install chromium`),
e.g. `make test-browser`."""

import json
import re
import shutil
import subprocess
import tempfile

import pytest

pytestmark = pytest.mark.browser

ray = pytest.importorskip("ray")
pytest.importorskip("mlflow")

from mlflow import MlflowClient  # noqa: E402
from tiny_sweep import run_rank_sweep, start_ui  # noqa: E402


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which(
    "google-chrome")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def render(url: str) -> str:
    """The DOM of ``url`` after the page's scripts ran (text only, tags removed)."""
    with tempfile.TemporaryDirectory() as profile:
        out = subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}",
                              "--virtual-time-budget=20000", "--dump-dom", url],
                             capture_output=True, text=True, timeout=120)
    return re.sub(r"<[^>]+>", "|", out.stdout)


@pytest.fixture(scope="module")
def ui(tmp_path_factory):
    if CHROMIUM is None:
        pytest.skip("no Chromium (apt-get install chromium)")
    tmp = tmp_path_factory.mktemp("ui")
    proc, base, exp_id = start_ui(run_rank_sweep(tmp, "uisweep"), cwd=tmp)
    try:
        yield tmp, base, exp_id
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_run_table_lists_the_sweep(ui):
    tmp, base, exp_id = ui
    text = render(f"{base}/#/experiments/{exp_id}/runs")
    assert "uisweep" in text
    assert re.search(r"\|5\|+ matching runs", text), "1 parent + 4 trials"


def test_trial_page_and_report_artifacts(ui):
    tmp, base, exp_id = ui
    state = json.loads((tmp / "ray" / "uisweep" / "sweep.json").read_text())
    client = MlflowClient(f"sqlite:///{tmp}/mlflow.db")
    child = client.search_runs([exp_id], "tags.`iclf.role` = 'trial'", max_results=1)[0]
    text = render(f"{base}/#/experiments/{exp_id}/runs/{child.info.run_id}")
    assert child.info.run_name in text
    assert "val/R1" in text and "test/R1" in text
    parent = state["parent_run_id"]
    text = render(f"{base}/#/experiments/{exp_id}/runs/{parent}/artifacts/report/summary.md")
    for name in ("summary.md", "summary.csv", "summary.tex", "metric_vs_params.png",
                 "importance.png"):
        assert name in text, name
    assert "lora.rank=4" in text  # the Markdown table itself is shown
