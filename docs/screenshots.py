"""Regenerate the README's pictures from the demo sweep (after `make demo`).

    python docs/screenshots.py [--port 5099]

It copies the demo report's metric-vs-parameters plot to docs/images/summary_plot.png and its
retrieval picture (the baseline's and the best configuration's top-10 for the same validation
queries) to docs/images/retrieval.png, starts `iclf ui ablations/demo.yaml` on runs/mlflow.db, and
opens the two URLs it prints, the sweep's comparison view as a table and as charts, in headless
Chromium (the system's /usr/bin/chromium, driven through its DevTools protocol on a pipe: nothing
to install, nothing downloaded). The only click closes MLflow's assistant side panel, which a new
browser profile opens by itself. Saves docs/images/mlflow_ui.png and docs/images/mlflow_charts.png.
A maintainer's tool, not a dependency.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
IMAGES = ROOT / "docs" / "images"
CLOSE_ASSISTANT = '[data-component-id="mlflow.assistant.chat_panel.close"]'


class Chromium:
    """Headless Chromium driven through the DevTools protocol on a pipe (fds 3 and 4)."""

    def __init__(self, executable: str, width: int, height: int):
        self.profile = tempfile.mkdtemp(prefix="iclf-shot-")
        to_chrome_r, self._to_chrome = os.pipe()
        self._from_chrome, from_chrome_w = os.pipe()

        def fds():
            os.dup2(to_chrome_r, 3)
            os.dup2(from_chrome_w, 4)

        self.proc = subprocess.Popen(
            [executable, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
             "--no-first-run", "--disable-background-networking", "--disable-component-update",
             "--disable-sync", f"--user-data-dir={self.profile}", f"--window-size={width},{height}",
             "--remote-debugging-pipe", "about:blank"],
            pass_fds=(3, 4), preexec_fn=fds, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self._buffer = b""
        self._id = 0
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = self.call("Target.attachToTarget",
                                 {"targetId": target, "flatten": True})["sessionId"]
        self.call("Emulation.setDeviceMetricsOverride",
                  {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
                  page=True)

    def _read(self) -> dict:
        while b"\0" not in self._buffer:
            chunk = os.read(self._from_chrome, 1 << 20)
            if not chunk:
                raise RuntimeError("Chromium closed its DevTools pipe")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def call(self, method: str, params: dict | None = None, *, page: bool = False) -> dict:
        self._id += 1
        message = {"id": self._id, "method": method, "params": params or {}}
        if page:
            message["sessionId"] = self.session
        os.write(self._to_chrome, json.dumps(message).encode() + b"\0")
        while True:
            reply = self._read()
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})

    def evaluate(self, expression: str):
        result = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True},
                           page=True)
        return result.get("result", {}).get("value")

    def open(self, url: str, ready_text: str, timeout: float = 90.0) -> None:
        """Go to ``url`` and wait until the page shows ``ready_text``, then a little longer."""
        self.call("Page.navigate", {"url": url}, page=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.evaluate(f"document.body && document.body.innerText.includes({ready_text!r})"):
                time.sleep(3.0)  # charts and the last fetches settle
                return
            time.sleep(0.5)
        raise TimeoutError(f"{url} did not show {ready_text!r} within {timeout:.0f} s")

    def click(self, selector: str) -> bool:
        clicked = self.evaluate(f"(() => {{ const e = document.querySelector({selector!r}); "
                                f"if (!e) return false; e.click(); return true; }})()")
        time.sleep(1.0)
        return bool(clicked)

    def screenshot(self, path: Path) -> None:
        data = self.call("Page.captureScreenshot", {"format": "png"}, page=True)["data"]
        path.write_bytes(base64.b64decode(data))

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        os.close(self._to_chrome)
        os.close(self._from_chrome)
        shutil.rmtree(self.profile, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=5099)
    parser.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    parser.add_argument("--iclf", default=str(ROOT / ".venv" / "bin" / "iclf"))
    parser.add_argument("--width", type=int, default=1600)
    parser.add_argument("--height", type=int, default=860)
    args = parser.parse_args()

    IMAGES.mkdir(parents=True, exist_ok=True)
    report = ROOT / "runs" / "ray" / "demo" / "report"
    shutil.copyfile(report / "metric_vs_params.png", IMAGES / "summary_plot.png")
    if (report / "retrieval.png").is_file():
        shutil.copyfile(report / "retrieval.png", IMAGES / "retrieval.png")

    ui = subprocess.Popen([args.iclf, "ui", "ablations/demo.yaml", "--port", str(args.port),
                           "--quiet"], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    browser = None
    try:
        lines = [ui.stdout.readline(), ui.stdout.readline()]
        urls = [re.search(r"http://\S+/runs\?\S+", line) for line in lines]
        if not all(urls):
            print(f"iclf ui said: {lines!r}", file=sys.stderr)
            return 1
        table, charts = (u.group(0) for u in urls)
        browser = Chromium(args.chromium, args.width, args.height)
        browser.open(table, "matching runs")
        browser.click(CLOSE_ASSISTANT)
        browser.screenshot(IMAGES / "mlflow_ui.png")
        browser.open(charts, "Sweep comparison")
        browser.click(CLOSE_ASSISTANT)
        browser.screenshot(IMAGES / "mlflow_charts.png")
    finally:
        if browser is not None:
            browser.close()
        ui.terminate()
        ui.wait(timeout=30)
    print(f"wrote {', '.join(p.name for p in sorted(IMAGES.glob('*.png')))} under {IMAGES}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
