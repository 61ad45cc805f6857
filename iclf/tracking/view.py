"""A sweep's ready comparison view in the MLflow UI: the state the UI opens on, kept in the
experiment's tags, and the URL that opens it.

How MLflow 3.17.2's UI keeps and chooses its view (read in its source,
``mlflow/server/js/src/experiment-tracking/components/experiment-page``, and checked in the bundle
the 3.17.2 wheel ships, ``mlflow/server/js/build``):

* The run table's and the charts' layout is the page's *UI state* (``ExperimentPageUIState``:
  ``selectedColumns``, ``runsHiddenMode``, ``compareRunCharts``, ``compareRunSections``, ...), and
  the table's filter and order are its *search facets* (``searchFilter``, ``orderByKey``,
  ``orderByAsc``, ``startTime``, ``lifecycleFilter``, ``modelVersionFilter``, ``datasetsFilter``),
  kept in the URL. Both persist per browser (localStorage) and can be shared: an experiment tag
  ``mlflow.sharedViewState.<key>`` holds them (3.17: a saved-view envelope ``{"name",
  "createdAt", "updatedAt", "state": "<JSON>"}``, also listed under the page's saved views; a plain
  JSON object is the older form it still reads), and the URL parameter ``viewStateShareKey=<key>``
  loads it (``useSharedExperimentViewState``).
* A shared view never sets ``runsExpanded``, ``runsPinned``, ``runsHidden``, ``runsVisibilityMap``
  or ``autoRefreshEnabled``, and is ignored when the URL already carries a search facet. So the
  parent run cannot be shared unfolded; instead, child runs are nested under their parent only
  when the table is neither filtered nor ordered (other than by start time): ordered by the
  sweep's metric and filtered to the sweep's trials, every trial is a row of its own.
* ``runsHiddenMode`` decides which runs the charts show (by default the first 10): ``SHOW_ALL``.
* Whether an experiment opens in the model-training layout (runs, charts, models) or the GenAI one
  (traces, judges, prompts): in 3.17.2 the UI reads it from its workflow switch, the URL parameter
  ``workflowType=machine_learning`` (else the browser's last choice in localStorage
  ``mlflow.workflowType``, GenAI by default); the experiment tag ``mlflow.experimentKind``
  (``custom_model_development``), which the UI writes when a user picks the kind and earlier 3.x
  UIs read, is set as well.
* ``compareRunsMode=CHART`` in the URL opens the chart view instead of the table.

:func:`write_view` puts the view in the experiment's tags when a sweep opens its record (or when
``iclf ui`` finds a sweep without one); :func:`view_url` is the address ``iclf ui`` prints.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from iclf.names import PARAM_PREFIX, PARENT_TAG

__all__ = ["ComparisonView", "SHARED_VIEW_PREFIX", "EXPERIMENT_KIND_TAG", "TABLE_METRICS",
           "view_key", "view_state", "view_tags", "write_view", "has_view", "view_url",
           "swept_params"]

SHARED_VIEW_PREFIX = "mlflow.sharedViewState."
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
MODEL_TRAINING_KIND = "custom_model_development"
#: Metric columns of the run table, after the swept parameters (the sweep's metric first if other).
TABLE_METRICS: tuple[str, ...] = ("val/R1", "val/mAP", "val/mINP", "test/R1", "trainable_params",
                                  "epoch")
COMPARISON_SECTION = "Sweep comparison"


@dataclass(frozen=True)
class ComparisonView:
    """What the view compares: the sweep's trials (children of ``parent_run_id``) over the swept
    ``params`` (dotted experiment keys), ranked by ``metric`` under ``mode``."""

    sweep: str
    parent_run_id: str
    params: tuple[str, ...]
    metric: str = "val/R1"
    mode: str = "max"

    @property
    def key(self) -> str:
        return view_key(self.parent_run_id)


def view_key(parent_run_id: str) -> str:
    """The share key of a sweep's view (URL-safe, one per parent run)."""
    return f"iclf-{parent_run_id}"


def _canonical(kind: str, key: str) -> str:
    """The UI's column id: ``metrics.`val/R1```, ``params.`param.lora.rank```."""
    return f"{kind}.`{key}`"


def _metrics_shown(view: ComparisonView) -> list[str]:
    return list(dict.fromkeys([view.metric, *TABLE_METRICS]))


def _line_chart(uuid: str, metric: str, section: str, runs: int) -> dict[str, Any]:
    return {"uuid": uuid, "type": "LINE", "displayName": f"{metric} per epoch, every trial",
            "runsCountToCompare": runs, "metricSectionId": section, "deleted": False,
            "isGenerated": False, "metricKey": metric, "selectedMetricKeys": [metric],
            "lineSmoothness": 0, "xAxisScaleType": "linear", "scaleType": "linear",
            "range": {}, "xAxisKey": "step", "selectedXAxisMetricKey": "", "displayPoints": True,
            "yAxisKey": "metric", "yAxisExpressions": [], "ignoreOutliers": False,
            "useGlobalXaxisKey": False, "useGlobalLineSmoothing": True}


def view_state(view: ComparisonView, runs: int = 1000) -> dict[str, Any]:
    """The search facets and UI state of the comparison view (the shared view's JSON object)."""
    section = "iclf-comparison"
    params = [f"{PARAM_PREFIX}{p}" for p in view.params]
    charts = [_line_chart("iclf-metric-curves", view.metric, section, runs)]
    if view.metric != "val/mAP":
        charts.append(_line_chart("iclf-map-curves", "val/mAP", section, runs))
    if params:
        charts.append({"uuid": "iclf-parallel", "type": "PARALLEL",
                       "displayName": f"swept parameters against {view.metric}",
                       "runsCountToCompare": runs, "metricSectionId": section, "deleted": False,
                       "isGenerated": False, "selectedParams": params,
                       "selectedMetrics": [view.metric], "showAllRuns": True})
    sections = [
        {"uuid": section, "name": COMPARISON_SECTION, "display": True, "isReordered": False,
         "deleted": False, "isGenerated": False},
        # the UI's own two sections, which it expects last unless the accordion was reordered
        {"uuid": "iclf-model-metrics", "name": "Model metrics", "display": True,
         "isReordered": False, "deleted": False, "isGenerated": True},
        {"uuid": "iclf-system-metrics", "name": "System metrics", "display": True,
         "isReordered": False, "deleted": False, "isGenerated": True},
    ]
    columns = ([_canonical("params", p) for p in params]
               + [_canonical("metrics", m) for m in _metrics_shown(view)])
    return {
        # search facets: this sweep's trials, best first (a filtered, metric-ordered table is flat)
        "searchFilter": f"tags.`{PARENT_TAG}` = '{view.parent_run_id}'",
        "orderByKey": _canonical("metrics", view.metric),
        "orderByAsc": view.mode == "min",
        "startTime": "ALL",
        "lifecycleFilter": "Active",
        "modelVersionFilter": "All Runs",
        "datasetsFilter": [],
        # UI state
        "selectedColumns": columns,
        "columnOrder": columns,  # the parameters, then the metrics in this order (else A-Z)
        "columnWidths": {},
        "runsHiddenMode": "SHOW_ALL",
        "compareRunCharts": charts,
        "compareRunSections": sections,
        "isAccordionReordered": True,  # keep "Sweep comparison" first; new sections go after
        "viewMaximized": False,
        "runListHidden": False,
        "groupBy": None,
        "groupsExpanded": {},
        "useGroupedValuesInCharts": True,
        "hideEmptyCharts": True,
        "globalLineChartConfig": {"xAxisKey": "step", "lineSmoothness": 0,
                                  "selectedXAxisMetricKey": ""},
        "chartsSearchFilter": "",
    }


def view_tags(view: ComparisonView, now_ms: int | None = None) -> dict[str, str]:
    """The experiment tags that carry the view: the saved view (envelope around the state's JSON)
    and the experiment's kind."""
    now = int(time.time() * 1000) if now_ms is None else int(now_ms)
    envelope = {"name": f"iclf: sweep {view.sweep}, trials by {view.metric} ({view.mode})",
                "createdAt": now, "updatedAt": now,
                "state": json.dumps(view_state(view), separators=(",", ":"))}
    return {f"{SHARED_VIEW_PREFIX}{view.key}": json.dumps(envelope, separators=(",", ":")),
            EXPERIMENT_KIND_TAG: MODEL_TRAINING_KIND}


def write_view(client, experiment_id: str, view: ComparisonView) -> str:
    """Set the view's experiment tags (the kind only when the experiment has none: a user's choice
    stands); returns the share key."""
    existing = client.get_experiment(experiment_id).tags
    for key, value in view_tags(view).items():
        if key == EXPERIMENT_KIND_TAG and existing.get(key):
            continue
        client.set_experiment_tag(experiment_id, key, value)
    return view.key


def has_view(experiment_tags: dict[str, str], parent_run_id: str) -> bool:
    return f"{SHARED_VIEW_PREFIX}{view_key(parent_run_id)}" in experiment_tags


def view_url(base: str, experiment_id: str, parent_run_id: str | None = None, *,
             chart: bool = False) -> str:
    """The UI address of an experiment's run table in the model-training layout; with
    ``parent_run_id``, on that sweep's comparison view (its tags must exist); ``chart``: the chart
    view."""
    query: dict[str, str] = {"workflowType": "machine_learning"}
    if parent_run_id is not None:
        query["viewStateShareKey"] = view_key(parent_run_id)
    if chart:
        query["compareRunsMode"] = "CHART"
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs?{urlencode(query)}"


def swept_params(resolved_spec: dict[str, Any]) -> tuple[str, ...]:
    """The swept parameter keys of a resolved spec (``spec.resolved.json``), in space order."""
    space = resolved_spec.get("space") or {}
    return tuple(str(k) for k in space) if isinstance(space, dict) else ()
