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
================  ==========  ===============================================================

``curves``: long format, one row per (run, epoch): ``run_id``, ``config_key``, ``epoch``,
``val/R1``, ``val/mAP``, ``val/mINP``.

All metrics are higher-is-better. Entry points: :func:`summarize` / :func:`summarize_sweep`
(:mod:`.summary`), :func:`param_importances` (:mod:`.importance`), the ``plot_*`` functions
(:mod:`.plots`), the table writers (:mod:`.tables`) and :func:`write_report`, which produces every
artifact in one call.
"""

# The names below are imported on first use (PEP 562), so that ``import iclf.analysis.cli`` (done by
# every ``iclf`` command to register its subcommands) does not pay for pandas, scipy and matplotlib.
_EXPORTS = {
    "param_importances": "importance",
    "plot_cost_benefit": "plots",
    "plot_curves": "plots",
    "plot_importance": "plots",
    "plot_metric_vs_params": "plots",
    "write_report": "report",
    "MeanStdCI": "stats",
    "TTest": "stats",
    "mean_std_ci": "stats",
    "paired_t_test": "stats",
    "welch_t_test": "stats",
    "DEFAULT_METRICS": "summary",
    "PARAM_PREFIX": "summary",
    "SweepSummary": "summary",
    "best": "summary",
    "finished_trials": "summary",
    "param_columns": "summary",
    "resolve_baseline": "summary",
    "summarize": "summary",
    "summarize_sweep": "summary",
    "format_console": "tables",
    "parse_latex": "tables",
    "parse_markdown": "tables",
    "to_latex": "tables",
    "to_markdown": "tables",
    "write_csv": "tables",
    "write_tables": "tables",
}


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'iclf.analysis' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f"iclf.analysis.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


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
