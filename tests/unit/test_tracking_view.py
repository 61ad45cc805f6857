"""The sweep's comparison view in the MLflow UI (iclf.tracking.view): the state it writes is one the
3.17.2 UI takes from a shared view, it lands in the experiment's tags when a sweep opens its record,
and the URL loads it in the model-training layout. The browser test (tests/browser) opens it."""

import json
from urllib.parse import parse_qs, urlsplit

import pytest

pytest.importorskip("mlflow")

from iclf.tracking.view import (  # noqa: E402
    EXPERIMENT_KIND_TAG, SHARED_VIEW_PREFIX, ComparisonView, view_state, view_tags, view_url)

# MLflow 3.17.2's UI (models/ExperimentPageUIState.tsx, hooks/useExperimentPageSearchFacets.tsx,
# hooks/useSharedExperimentViewState.ts): what a shared view may set, and what it never takes.
UI_STATE_FIELDS = {"selectedColumns", "columnOrder", "columnWidths", "runsExpanded", "runsPinned",
                   "runsHidden", "runsVisibilityMap", "runsHiddenMode", "compareRunCharts",
                   "compareRunSections", "viewMaximized", "runListHidden", "isAccordionReordered",
                   "groupBy", "groupsExpanded", "autoRefreshEnabled", "useGroupedValuesInCharts",
                   "hideEmptyCharts", "globalLineChartConfig", "chartsSearchFilter"}
NOT_SHARED = {"runsExpanded", "runsPinned", "runsHidden", "runsVisibilityMap", "autoRefreshEnabled"}
SEARCH_FACETS = {"searchFilter", "orderByKey", "orderByAsc", "startTime", "lifecycleFilter",
                 "modelVersionFilter", "datasetsFilter"}

VIEW = ComparisonView("demo", "a" * 32, ("lora.rank", "fusion.depth"), "val/R1", "max")


def test_state_is_what_a_shared_view_sets():
    state = view_state(VIEW)
    assert set(state) <= (UI_STATE_FIELDS - NOT_SHARED) | SEARCH_FACETS
    assert SEARCH_FACETS <= set(state)
    # this sweep's trials only, best first: a filtered, metric-ordered table nests no run
    assert state["searchFilter"] == f"tags.`mlflow.parentRunId` = '{'a' * 32}'"
    assert state["orderByKey"] == "metrics.`val/R1`" and state["orderByAsc"] is False
    assert state["selectedColumns"] == [
        "params.`param.lora.rank`", "params.`param.fusion.depth`", "metrics.`val/R1`",
        "metrics.`val/mAP`", "metrics.`val/mINP`", "metrics.`test/R1`",
        "metrics.`trainable_params`", "metrics.`epoch`"]
    assert state["columnOrder"] == state["selectedColumns"]
    assert state["runsHiddenMode"] == "SHOW_ALL"  # the charts show every trial, not the first 10
    charts = {c["uuid"]: c for c in state["compareRunCharts"]}
    assert charts["iclf-metric-curves"]["type"] == "LINE"
    assert charts["iclf-metric-curves"]["metricKey"] == "val/R1"
    assert charts["iclf-metric-curves"]["xAxisKey"] == "step"  # epochs are the steps
    parallel = charts["iclf-parallel"]
    assert parallel["type"] == "PARALLEL" and parallel["selectedMetrics"] == ["val/R1"]
    assert parallel["selectedParams"] == ["param.lora.rank", "param.fusion.depth"]
    sections = [s["name"] for s in state["compareRunSections"]]
    assert sections == ["Sweep comparison", "Model metrics", "System metrics"]
    assert {c["metricSectionId"] for c in charts.values()} == {state["compareRunSections"][0]["uuid"]}


def test_mode_min_sorts_ascending_and_the_metric_leads():
    state = view_state(ComparisonView("s", "b" * 32, ("optim.lr",), "val/mINP", "min"))
    assert state["orderByKey"] == "metrics.`val/mINP`" and state["orderByAsc"] is True
    assert state["selectedColumns"][:3] == ["params.`param.optim.lr`", "metrics.`val/mINP`",
                                            "metrics.`val/R1`"]
    assert state["selectedColumns"].count("metrics.`val/mINP`") == 1


def test_tags_hold_a_saved_view_envelope():
    tags = view_tags(VIEW, now_ms=1234)
    envelope = json.loads(tags[f"{SHARED_VIEW_PREFIX}iclf-{'a' * 32}"])
    assert set(envelope) == {"name", "createdAt", "updatedAt", "state"}
    assert envelope["createdAt"] == envelope["updatedAt"] == 1234
    assert "demo" in envelope["name"]
    assert json.loads(envelope["state"]) == view_state(VIEW)  # the state as a JSON string
    assert tags[EXPERIMENT_KIND_TAG] == "custom_model_development"
    assert len(tags[f"{SHARED_VIEW_PREFIX}iclf-{'a' * 32}"]) < 20000  # MLflow's tag value limit


def test_url_loads_the_view_in_the_model_training_layout():
    url = view_url("http://127.0.0.1:5000/", "7", "c" * 32)
    assert url.startswith("http://127.0.0.1:5000/#/experiments/7/runs?")
    query = parse_qs(urlsplit(url.split("#", 1)[1]).query)
    assert query == {"workflowType": ["machine_learning"], "viewStateShareKey": [f"iclf-{'c' * 32}"]}
    assert not SEARCH_FACETS & set(query)  # a facet in the URL would make the UI ignore the view
    charts = parse_qs(urlsplit(view_url("http://h", "7", "c" * 32, chart=True)).fragment
                      .split("?", 1)[1])
    assert charts["compareRunsMode"] == ["CHART"]
    assert view_url("http://h", "7") == "http://h/#/experiments/7/runs?workflowType=machine_learning"


def test_open_sweep_writes_the_view_into_the_experiment(tmp_path):
    from iclf.tracking.mlflow import connect, open_sweep

    client = connect(f"sqlite:///{tmp_path}/mlflow.db")
    record = open_sweep(client, experiment="e", sweep="demo", tags={}, params=["lora.rank"],
                        metric="val/mAP", mode="max")
    tags = client.get_experiment(record.experiment_id).tags
    envelope = json.loads(tags[f"{SHARED_VIEW_PREFIX}iclf-{record.parent_run_id}"])
    state = json.loads(envelope["state"])
    assert state["orderByKey"] == "metrics.`val/mAP`"
    assert state["searchFilter"].endswith(f"'{record.parent_run_id}'")
    assert tags[EXPERIMENT_KIND_TAG] == "custom_model_development"
    # a second sweep in the same experiment gets its own view; a kind the user chose stands
    client.set_experiment_tag(record.experiment_id, EXPERIMENT_KIND_TAG, "finetuning")
    other = open_sweep(client, experiment="e", sweep="demo2", tags={}, params=["fusion.depth"])
    tags = client.get_experiment(record.experiment_id).tags
    assert f"{SHARED_VIEW_PREFIX}iclf-{other.parent_run_id}" in tags
    assert f"{SHARED_VIEW_PREFIX}iclf-{record.parent_run_id}" in tags
    assert tags[EXPERIMENT_KIND_TAG] == "finetuning"
    # without params (a caller that wants no view), nothing is written
    bare = open_sweep(client, experiment="bare", sweep="x", tags={})
    assert not any(k.startswith(SHARED_VIEW_PREFIX)
                   for k in client.get_experiment(bare.experiment_id).tags)
