"""The MLflow UI served by `iclf ui`, opened in headless Chromium: the URL `iclf ui` prints opens,
with no click, on the sweep's comparison view (every trial a row, best first, the swept parameter
and the metric columns; the chart view with the comparison charts), the sweep's run table counts the
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
from tiny_sweep import run_rank_sweep, start_ui_view  # noqa: E402


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which(
    "google-chrome")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def render(url: str) -> str:
    """The DOM of ``url`` after the page's scripts ran (text only, tags removed), in a new browser
    profile (nothing remembered from an earlier visit)."""
    with tempfile.TemporaryDirectory() as profile:
        out = subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}",
                              "--window-size=1600,1000", "--virtual-time-budget=20000",
                              "--dump-dom", url],
                             capture_output=True, text=True, timeout=120)
    return re.sub(r"<[^>]+>", "|", out.stdout)


@pytest.fixture(scope="module")
def ui(tmp_path_factory):
    if CHROMIUM is None:
        pytest.skip("no Chromium (apt-get install chromium)")
    tmp = tmp_path_factory.mktemp("ui")
    proc, table, charts = start_ui_view(run_rank_sweep(tmp, "uisweep"), cwd=tmp)
    base, exp_id = re.match(r"(http://[^/]+)/#/experiments/(\d+)/runs", table).groups()
    try:
        yield tmp, base, exp_id, table, charts
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _cells(text: str) -> list[str]:
    return [c.strip() for c in text.split("|") if c.strip()]


def test_iclf_ui_opens_on_the_comparison_view(ui):
    """No click: the printed URL shows every trial as a row (none folded under the parent), best
    val/R1 first, with the swept parameter and the metric columns, in the model-training layout."""
    tmp, base, exp_id, table, charts = ui
    client = MlflowClient(f"sqlite:///{tmp}/mlflow.db")
    trials = client.search_runs([exp_id], "tags.`iclf.role` = 'trial'")
    assert len(trials) == 4
    text = render(table)
    cells = _cells(text)
    for header in ("param.lora.rank", "val/R1", "val/mAP", "val/mINP", "test/R1",
                   "trainable_params"):
        assert header in cells, header
    rows = [c for c in cells if c in {t.info.run_name for t in trials}]
    assert sorted(rows) == sorted(t.info.run_name for t in trials)  # every trial, once
    r1 = {t.info.run_name: t.data.metrics["val/R1"] for t in trials}
    assert [r1[name] for name in rows] == sorted(r1.values(), reverse=True)  # best first
    assert re.search(r"\|4\|+ *matching runs", text), "the 4 trials, not the parent"
    assert "Judges" not in cells and "Models" in cells  # model training, not the GenAI layout


def test_iclf_ui_chart_view_compares_the_trials(ui):
    """The second URL opens the chart view on the comparison section: val/R1 and val/mAP per epoch
    for every trial and the parallel coordinates of the swept parameter against val/R1."""
    tmp, base, exp_id, table, charts = ui
    cells = _cells(render(charts))
    at = cells.index("Sweep comparison")
    assert cells[at + 1] == "(3)", cells[at:at + 4]


def test_run_table_lists_the_sweep(ui):
    tmp, base, exp_id, _, _ = ui
    text = render(f"{base}/#/experiments/{exp_id}/runs")
    assert "uisweep" in text
    assert re.search(r"\|5\|+ matching runs", text), "1 parent + 4 trials"


def test_trial_page_and_report_artifacts(ui):
    tmp, base, exp_id, _, _ = ui
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
