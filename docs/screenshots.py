"""Regenerate the README's pictures from the demo sweep (after `make demo`).

    python docs/screenshots.py [--port 5099]

It copies the demo report's metric-vs-parameters plot to docs/images/summary_plot.png, starts
`iclf ui` on runs/mlflow.db, opens the sweep's run table in headless Chromium with Playwright
(`pip install playwright`; it drives the system's /usr/bin/chromium, nothing is downloaded), expands
the sweep's parent run, and saves docs/images/mlflow_ui.png. A maintainer's tool, not a dependency.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
IMAGES = ROOT / "docs" / "images"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=5099)
    parser.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    parser.add_argument("--iclf", default=str(ROOT / ".venv" / "bin" / "iclf"))
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    IMAGES.mkdir(parents=True, exist_ok=True)
    report = ROOT / "runs" / "ray" / "demo" / "report"
    shutil.copyfile(report / "metric_vs_params.png", IMAGES / "summary_plot.png")

    ui = subprocess.Popen([args.iclf, "ui", "ablations/demo.yaml", "--port", str(args.port),
                           "--quiet"], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        line = ui.stdout.readline()
        url = re.search(r"http://\S+/runs", line)
        if url is None:
            print(f"iclf ui said: {line!r}", file=sys.stderr)
            return 1
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=args.chromium, args=[
                "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--disable-quic"])
            page = browser.new_page(viewport={"width": 1600, "height": 800})
            page.goto(url.group(0))
            page.wait_for_selector("text=matching runs", timeout=60_000)
            page.wait_for_timeout(1000)
            close = page.get_by_role("button", name="Close")  # the assistant side panel
            if close.count():
                close.first.click()
            # Expand the sweep's parent run: its expander sits just left of the run name in the
            # table (the lowest of the "demo" labels; the others are the breadcrumb and sidebar).
            boxes = [b for b in (e.bounding_box() for e in
                                 page.get_by_text("demo", exact=True).all()) if b]
            name = max(boxes, key=lambda b: b["y"])
            page.mouse.click(name["x"] - 22, name["y"] + name["height"] / 2)
            page.wait_for_timeout(1500)
            page.screenshot(path=str(IMAGES / "mlflow_ui.png"))
            browser.close()
    finally:
        ui.terminate()
        ui.wait(timeout=30)
    print(f"wrote {IMAGES / 'summary_plot.png'} and {IMAGES / 'mlflow_ui.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
