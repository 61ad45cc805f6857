"""The smaller faults a new user meets, each one line on stderr and exit 2, nothing created."""

import pytest

pytest.importorskip("mlflow")

from iclf.cli import main  # noqa: E402
from tiny_sweep import write_tiny_spec  # noqa: E402


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    return err


def test_a_tracking_uri_that_is_not_a_database(tmp_path, capsys):
    text = tmp_path / "not-a-db.txt"
    text.write_text("hello, I am not SQLite\n")
    for command in ("summary", "best"):
        assert main([command, "demo", "--tracking-uri", str(text)]) == 2
        err = _one_line(capsys)
        assert err.startswith("error: ") and "not-a-db.txt" in err, err
    assert text.read_text() == "hello, I am not SQLite\n"  # untouched


def test_num_cpus_must_be_at_least_one(tmp_path, capsys):
    spec = write_tiny_spec(tmp_path, "cpus", "lora.rank: {grid: [0]}")
    assert main(["sweep", str(spec), "--num-cpus", "0"]) == 2
    assert "--num-cpus: must be at least 1, got 0" in _one_line(capsys)
    assert not (tmp_path / "ray").exists() and not (tmp_path / "mlflow.db").exists()


def test_parse_errors_of_every_command_are_one_line(capsys):
    for argv in (["sweep"], ["summary"], ["ui", "--port", "x"], ["data", "stats", "--bogus"]):
        assert main(argv) == 2, argv
        assert _one_line(capsys).startswith("error: "), argv
