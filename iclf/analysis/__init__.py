"""Analysis of a finished ablation sweep: statistics over seeds, importance, plots and tables.

Everything here works on two pandas DataFrames; reading them out of MLflow is
:mod:`iclf.tracking`'s job, so this package is pure (pandas, numpy, matplotlib; scipy when
present; optuna only inside :func:`iclf.analysis.importance.param_importances`).

``trials``: one row per trial (an MLflow child run)

================  ==========  ===============================================================
column            type        meaning
================  ==========  ===============================================================
``run_id``        str         the run
``config_key``    str         the configuration without the seed, e.g.
                              ``"lora.rank=8,fusion.depth=2"``
``param.<name>``  any         one column per ablated parameter, dotted config name, e.g.
                              ``param.lora.rank``; NaN where a conditional parameter is inactive
``seed``          int         the training seed; unique per configuration among FINISHED runs
``status``        str         ``FINISHED`` / ``FAILED`` / ``KILLED``; only FINISHED rows count
``val/R1`` ...    float       ``val/R1``, ``val/R5``, ``val/R10``, ``val/mAP``, ``val/mINP``,
                              ``test/R1``, ``test/mAP``, ``test/mINP``; NaN when not logged
                              (e.g. no test evaluation for an early-stopped trial)
``trainable_params``  int     parameters with ``requires_grad`` (LoRA cost)
``device_seconds``  float     accelerator time the run used (all statuses count as cost)
``device_share``  float       optional: the share of its GPU the run held (``resources.gpu``);
                              its cost is ``device_seconds`` x this; missing or NaN: 1
================  ==========  ===============================================================

``curves``: long format, one row per (run, epoch): ``run_id``, ``config_key``, ``epoch``,
``val/R1``, ``val/mAP``, ``val/mINP``.

All metrics are higher-is-better. Entry points: :func:`summarize` / :func:`summarize_sweep`
(:mod:`.summary`), :func:`param_importances` (:mod:`.importance`), the ``plot_*`` functions
(:mod:`.plots`), the table writers (:mod:`.tables`) and :func:`write_report`, which produces every
artifact in one call.
"""

from iclf.analysis.importance import (  # noqa: F401
    param_importances,
)
from iclf.analysis.plots import (  # noqa: F401
    plot_cost_benefit,
    plot_curves,
    plot_importance,
    plot_metric_vs_params,
)
from iclf.analysis.report import (  # noqa: F401
    write_report,
)
from iclf.analysis.stats import (  # noqa: F401
    MeanStdCI,
    TTest,
    mean_std_ci,
    paired_t_test,
    welch_t_test,
)
from iclf.analysis.summary import (  # noqa: F401
    DEFAULT_METRICS,
    PARAM_PREFIX,
    SweepSummary,
    best,
    finished_trials,
    param_columns,
    resolve_baseline,
    summarize,
    summarize_sweep,
)
from iclf.analysis.tables import (  # noqa: F401
    format_console,
    parse_latex,
    parse_markdown,
    to_latex,
    to_markdown,
    write_csv,
    write_tables,
)

__all__ = [
    "DEFAULT_METRICS",
    "PARAM_PREFIX",
    "MeanStdCI",
    "SweepSummary",
    "TTest",
    "best",
    "finished_trials",
    "format_console",
    "mean_std_ci",
    "paired_t_test",
    "param_columns",
    "param_importances",
    "parse_latex",
    "parse_markdown",
    "plot_cost_benefit",
    "plot_curves",
    "plot_importance",
    "plot_metric_vs_params",
    "resolve_baseline",
    "summarize",
    "summarize_sweep",
    "to_latex",
    "to_markdown",
    "welch_t_test",
    "write_csv",
    "write_report",
    "write_tables",
]
