"""`iclf ui` never shows another server's data: a busy port is refused (explicit --port) or skipped
(the default port), never served by someone else while we print our database's name."""

import http.server
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

pytest.importorskip("mlflow")

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def other_server():
    """Someone else's HTTP server (answers /health with 200) on a free port of 127.0.0.1."""

    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - the stdlib's name
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"OK")

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()


def _db(tmp_path: Path) -> str:
    from iclf.tracking.mlflow import connect

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    connect(uri)
    return uri


def test_a_busy_port_is_refused_in_one_line(tmp_path, other_server):
    uri = _db(tmp_path)
    proc = subprocess.run([sys.executable, "-m", "iclf", "ui", "--tracking-uri", uri, "--port",
                           str(other_server), "--quiet"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stdout == ""  # no URL printed: nothing would be ours behind it
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        f"error: port {other_server} on 127.0.0.1 is in use"), proc.stderr


def test_the_default_port_moves_to_the_next_free_one_and_says_so(tmp_path):
    uri = _db(tmp_path)
    with socket.socket() as taken:
        try:
            taken.bind(("127.0.0.1", 5000))
        except OSError:
            pytest.skip("port 5000 is not ours to occupy here")
        taken.listen()
        proc = subprocess.Popen([sys.executable, "-m", "iclf", "ui", "--tracking-uri", uri,
                                 "--quiet"], cwd=tmp_path, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        try:
            first = proc.stdout.readline()
            assert "port 5000 on 127.0.0.1 is in use" in first and "5001" in first, first
            url = proc.stdout.readline()
            assert "http://127.0.0.1:5001" in url, url
        finally:
            proc.terminate()
            proc.wait(timeout=60)
