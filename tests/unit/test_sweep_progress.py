"""iclf's progress table during `iclf sweep` (iclf.sweep.progress.TrialTable): per trial the swept
parameters, seed, epoch, the metric, its best so far, val/mAP and samples/s, with human names; when
it prints; what it says about stopped and failed trials. (test_sweep.py reads it from a real sweep.)"""

import os
from types import SimpleNamespace

import pytest

pytest.importorskip("ray")

from iclf.sweep.progress import MAX_ROWS, TrialTable, use_trial_table  # noqa: E402


def _trial(i, status, params, seed, result=None):
    return SimpleNamespace(trial_id=f"abc_{i:05d}", status=status,
                           config={"params": params, "seed": seed}, last_result=result or {})


def _table(mode="max", metric="val/R1", clock=None):
    return TrialTable(["lora.rank", "losses.weights"], metric, mode, 3,
                      params_of=lambda c: c["params"], seed_of=lambda c: c["seed"],
                      every_s=20.0, clock=clock or (lambda: 100.0))


def _result(epoch, r1, best, mAP=40.0, sps=123.456):
    return {"epoch": epoch, "val/R1": r1, "objective": best, "val/mAP": mAP,
            "samples_per_s": sps, "train/itc": 1.0, "lr": 1e-4}


def test_columns_rows_and_the_best_trial():
    table = _table()
    trials = [
        _trial(0, "TERMINATED", {"lora.rank": 0, "losses.weights": '{"id": 1.0, "itc": 1.0, "mlm": 0.5}'}, 0,
               _result(3, 61.0, 63.5)),
        _trial(1, "TERMINATED", {"lora.rank": 4, "losses.weights": "{}"}, 1, _result(1, 20.0, 20.0)),
        _trial(2, "RUNNING", {"lora.rank": 16, "losses.weights": "{}"}, 0, _result(2, 58.25, 60.0)),
        _trial(3, "ERROR", {"lora.rank": 16, "losses.weights": "{}"}, 1),
        _trial(4, "PENDING", {"lora.rank": 0, "losses.weights": "{}"}, 1),
    ]
    text = table.render(trials)
    lines = text.splitlines()
    assert lines[0].startswith("[iclf] 0:00:00  1 running, 1 pending, 1 done, 1 stopped, 1 failed")
    assert "best val/R1 63.50: lora.rank=0 losses.weights={\"id\": 1.0, \"itc\": 1.0,~ seed=0" in lines[0]
    assert lines[1].split() == ["trial", "status", "lora.rank", "losses.weights", "seed", "epoch",
                                "val/R1", "best", "val/R1", "val/mAP", "samples/s"]
    rows = {line.split()[0]: line for line in lines[2:]}
    assert rows["abc_00000"].split()[1] == "done" and "3/3" in rows["abc_00000"]
    assert rows["abc_00001"].split()[1] == "stopped"  # ASHA ended it after 1 of 3 epochs
    assert rows["abc_00002"].split()[-5:] == ["2/3", "58.25", "60.00", "40.00", "123.46"]
    assert rows["abc_00003"].split()[1] == "failed"
    assert "train/itc" not in text and "lr" not in text.split()


def test_mode_min_and_another_metric():
    table = _table(mode="min", metric="val/mINP")
    trials = [_trial(0, "RUNNING", {"lora.rank": 0}, 0,
                     {"epoch": 1, "val/mINP": 9.0, "objective": 9.0, "val/R1": 1.0}),
              _trial(1, "RUNNING", {"lora.rank": 4}, 0,
                     {"epoch": 1, "val/mINP": 3.0, "objective": 3.0, "val/R1": 2.0})]
    text = table.render(trials)
    assert "best val/mINP 3.00: lora.rank=4" in text
    assert text.splitlines()[1].split()[6:] == ["val/mINP", "best", "val/mINP", "val/R1",
                                                "val/mAP", "samples/s"]


def test_no_result_yet_and_no_finite_best():
    table = _table()
    trials = [_trial(0, "RUNNING", {"lora.rank": 0}, 0,
                     {"epoch": 1, "objective": float("-inf")})]  # no evaluation yet
    assert "best" not in table.render(trials).splitlines()[0]
    assert table.render([]).splitlines()[0].startswith("[iclf] 0:00:00  no trial yet")


def test_prints_when_something_changed_at_most_every_period(capsys):
    now = [0.0]
    table = _table(clock=lambda: now[0])
    table.setup(total_samples=2)
    trials = [_trial(0, "RUNNING", {"lora.rank": 0}, 0)]
    assert table.should_report(trials)
    table.report(trials, False)
    assert "of 2" in capsys.readouterr().out
    now[0] = 5.0
    trials[0].last_result = _result(1, 50.0, 50.0)
    assert not table.should_report(trials)  # changed, but within 20 s
    now[0] = 25.0
    assert table.should_report(trials)
    table.report(trials, False)
    now[0] = 60.0
    assert not table.should_report(trials)  # nothing new
    assert table.should_report(trials, done=True)


def test_many_trials_show_running_failed_then_best():
    table = _table()
    trials = [_trial(i, "TERMINATED", {"lora.rank": i, "losses.weights": 0.5}, 0,
                     _result(3, float(i), float(i)))
              for i in range(MAX_ROWS + 10)]
    trials[3].status = "RUNNING"
    lines = table.render(trials).splitlines()
    shown = [line.split()[0] for line in lines[2:-1]]
    assert len(shown) == MAX_ROWS and shown[0] == "abc_00003"
    assert shown[1] == f"abc_{MAX_ROWS + 9:05d}"  # then the best finished ones
    assert lines[-1] == "... and 10 more trials (iclf ui shows them all)"
    assert lines[2].split()[3] == "0.5"  # a parameter as written, not as a metric


def test_trial_table_switches_tune_to_its_reporter_engine_and_back(monkeypatch):
    monkeypatch.delenv("RAY_AIR_NEW_OUTPUT", raising=False)
    use_trial_table(True)
    assert os.environ["RAY_AIR_NEW_OUTPUT"] == "0"
    use_trial_table(False)
    assert "RAY_AIR_NEW_OUTPUT" not in os.environ
    monkeypatch.setenv("RAY_AIR_NEW_OUTPUT", "1")
    use_trial_table(True)
    use_trial_table(True)
    use_trial_table(False)
    assert os.environ["RAY_AIR_NEW_OUTPUT"] == "1"
