"""The sweep summary as CSV, Markdown, LaTeX (booktabs) and a plain console table.

Markdown and LaTeX print ``mean ± std`` over seeds per metric with the best mean of each column in
bold, and the primary metric's difference to the baseline with its p-value; the console table
prints ``mean ± 95% CI``. :func:`parse_markdown` and :func:`parse_latex` read the printed numbers
back (the tests check they agree with the summary at the printed precision).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from iclf.analysis.summary import SweepSummary, best

__all__ = [
    "format_console",
    "parse_latex",
    "parse_markdown",
    "to_latex",
    "to_markdown",
    "write_csv",
    "write_tables",
]

_MISSING = "-"  # a metric no run of the configuration logged
_LATEX_MISSING = "--"


class _View:
    """What every format prints: the table, its metrics, the primary metric and the baseline."""

    def __init__(
        self, summary: pd.DataFrame | SweepSummary, metrics: Sequence[str] | None, decimals: int
    ):
        if isinstance(summary, SweepSummary):
            table, primary, alpha = summary.table, summary.primary, summary.alpha
            available = list(summary.metrics)
            self.total_hours: float | None = summary.total_device_hours
        else:
            table, alpha, self.total_hours = summary, 0.05, None
            available = [c[: -len(" mean")] for c in summary.columns if str(c).endswith(" mean")]
            primary = available[0] if available else None
        if "config_key" not in table.columns:
            raise ValueError("summary table has no config_key column: pass summarize()'s output")
        chosen = list(metrics) if metrics is not None else available
        unknown = [m for m in chosen if f"{m} mean" not in table.columns]
        if unknown:
            raise ValueError(f"summary table has no statistics for metric(s) {unknown}")
        # metrics that no configuration logged (e.g. test/* before the test phase) are left out
        self.metrics = [m for m in chosen if table[f"{m} mean"].notna().any()]
        if not self.metrics:
            raise ValueError(f"none of the metrics {chosen} has a value in the summary table")
        self.table = table.reset_index(drop=True)
        self.primary = primary if primary in self.metrics else self.metrics[0]
        self.alpha = alpha
        self.decimals = decimals
        self.has_baseline = "is_baseline" in table.columns and f"delta {self.primary}" in table
        self.baseline = None
        if self.has_baseline:
            self.baseline = str(table.loc[table["is_baseline"], "config_key"].iloc[0])
        self.best = {m: self._best(m) for m in self.metrics}

    def _best(self, metric: str) -> set[int]:
        rounded = self.table[f"{metric} mean"].round(self.decimals)
        if rounded.isna().all():
            return set()
        return set(rounded.index[rounded == rounded.max()])

    def num(self, value: float) -> str:
        return f"{value:.{self.decimals}f}"

    def mean_std(self, i: int, metric: str, spread: str = "std") -> tuple[str, str | None]:
        """Printed mean and spread (None when the spread is undefined, e.g. one seed)."""
        row = self.table.loc[i]
        mean, sd = row[f"{metric} mean"], row[f"{metric} {spread}"]
        if _nan(mean):
            return _MISSING, None
        return self.num(mean), (None if _nan(sd) else self.num(sd))

    def delta(self, i: int) -> tuple[str, str | None, bool] | None:
        """Printed delta, p-value and significance for the primary metric; None for the baseline."""
        row = self.table.loc[i]
        if bool(row["is_baseline"]):
            return None
        delta, p = row[f"delta {self.primary}"], row[f"p {self.primary}"]
        return (
            _MISSING if _nan(delta) else f"{delta:+.{self.decimals}f}",
            None if _nan(p) else f"{p:.2g}",
            bool(row[f"sig {self.primary}"]),
        )

    def footnote(self) -> str:
        text = "Mean ± std over seeds (n seeds); best mean per column in bold."
        if self.has_baseline:
            text += (
                f" Δ: difference of {self.primary} means to the baseline {self.baseline}; p: "
                "two-sided t-test over seeds (paired by seed when both ran the same seeds, "
                f"else Welch); * p < {self.alpha:g}."
            )
        return text


def _nan(value: object) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def write_csv(summary: pd.DataFrame | SweepSummary, path: str | Path) -> Path:
    """Every column of the summary table, unrounded."""
    table = summary.table if isinstance(summary, SweepSummary) else summary
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(path, index=False)
    return path


# --- Markdown --------------------------------------------------------------------------------


def _md_escape(text: str) -> str:
    return text.replace("|", r"\|")


def to_markdown(
    summary: pd.DataFrame | SweepSummary, metrics: Sequence[str] | None = None, decimals: int = 2
) -> str:
    """A pipe table: configuration, n, ``mean ± std`` per metric, Δ primary (p); then a note."""
    view = _View(summary, metrics, decimals)
    header = ["Configuration", "n", *view.metrics]
    if view.has_baseline:
        header.append(f"Δ {view.primary} (p)")
    lines = ["| " + " | ".join(header) + " |", "|:--" + "|--:" * (len(header) - 1) + "|"]
    for i in view.table.index:
        cells = [_md_escape(str(view.table.loc[i, "config_key"])), str(view.table.loc[i, "n"])]
        for m in view.metrics:
            mean, sd = view.mean_std(i, m)
            mean = f"**{mean}**" if i in view.best[m] else mean
            cells.append(mean if sd is None else f"{mean} ± {sd}")
        if view.has_baseline:
            d = view.delta(i)
            cells.append("baseline" if d is None else _delta_cell(*d))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n\n" + view.footnote() + "\n"


def _delta_cell(delta: str, p: str | None, significant: bool) -> str:
    return delta + ("*" if significant else "") + (f" (p={p})" if p is not None else "")


def _split_row(line: str, sep: str) -> list[str]:
    cells = re.split(r"(?<!\\)" + re.escape(sep), line)
    return [c.strip() for c in cells]


def parse_markdown(text: str) -> pd.DataFrame:
    """The numbers of a :func:`to_markdown` table, indexed by configuration.

    Columns: ``n``; per metric ``<m> mean``, ``<m> std`` and ``<m> best`` (printed in bold); with a
    baseline column ``delta <m>``, ``p <m>``, ``sig <m>`` for the primary metric (NaN/False on the
    baseline row, which has ``is_baseline`` True).
    """
    rows = [ln.strip() for ln in text.splitlines() if ln.strip().startswith("|")]
    if len(rows) < 2:
        raise ValueError("no Markdown pipe table found")
    header = _split_row(rows[0].strip("|"), "|")
    body = [_split_row(r.strip("|"), "|") for r in rows[2:]]
    return _parse_cells(header, body, bold=r"\*\*(.*?)\*\*", plus="±", unescape=_md_unescape)


def _md_unescape(text: str) -> str:
    return text.replace(r"\|", "|")


# --- LaTeX -----------------------------------------------------------------------------------

_LATEX_SPECIALS = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
}


def _tex_escape(text: str) -> str:
    return "".join(_LATEX_SPECIALS.get(ch, ch) for ch in text)


def _tex_unescape(text: str) -> str:
    escapes = sorted(_LATEX_SPECIALS.values(), key=len, reverse=True)
    pattern = "|".join(re.escape(v) for v in escapes)
    inverse = {v: k for k, v in _LATEX_SPECIALS.items()}
    return re.sub(pattern, lambda m: inverse[m.group(0)], text)


def to_latex(
    summary: pd.DataFrame | SweepSummary,
    metrics: Sequence[str] | None = None,
    decimals: int = 2,
    caption: str = "Ablation results.",
    label: str = "tab:ablation",
) -> str:
    """A booktabs ``table`` with ``mean $\\pm$ std`` per metric, best per column in bold."""
    view = _View(summary, metrics, decimals)
    header = ["Configuration", "$n$", *(_tex_escape(m) for m in view.metrics)]
    if view.has_baseline:
        header.append(f"$\\Delta$ {_tex_escape(view.primary)} ($p$)")
    body = []
    for i in view.table.index:
        cells = [_tex_escape(str(view.table.loc[i, "config_key"])), str(view.table.loc[i, "n"])]
        for m in view.metrics:
            mean, sd = view.mean_std(i, m)
            if mean == _MISSING:
                cells.append(_LATEX_MISSING)
                continue
            mean = f"\\textbf{{{mean}}}" if i in view.best[m] else mean
            cells.append(mean if sd is None else f"{mean} $\\pm$ {sd}")
        if view.has_baseline:
            d = view.delta(i)
            if d is None:
                cells.append("baseline")
            else:
                delta, p, sig = d
                delta = _LATEX_MISSING if delta == _MISSING else f"${delta}$"
                cells.append(delta + ("$^{*}$" if sig else "") + (f" ({p})" if p else ""))
        body.append("    " + " & ".join(cells) + r" \\")
    note = _tex_escape(view.footnote())
    note = note.replace("±", r"$\pm$").replace("Δ", r"$\Delta$").replace("<", "$<$")
    lines = [
        r"\begin{table}[ht]",
        r"  \centering",
        f"  \\caption{{{caption} {note}}}",
        f"  \\label{{{label}}}",
        r"  \begin{tabular}{l" + "r" * (len(header) - 1) + "}",
        r"    \toprule",
        "    " + " & ".join(header) + r" \\",
        r"    \midrule",
        *body,
        r"    \bottomrule",
        r"  \end{tabular}",
        r"\end{table}",
    ]
    return "\n".join(lines) + "\n"


def parse_latex(text: str) -> pd.DataFrame:
    """The numbers of a :func:`to_latex` table; same columns as :func:`parse_markdown`."""
    try:
        head = text.split(r"\toprule", 1)[1].split(r"\midrule", 1)
        rows_text = head[1].split(r"\bottomrule", 1)[0]
    except IndexError:
        raise ValueError(r"no booktabs table (\toprule, \midrule, \bottomrule) found") from None
    header = _split_row(head[0].strip().removesuffix(r"\\"), "&")
    for tex, plain in (("$n$", "n"), (r"$\Delta$", "Δ"), ("($p$)", "(p)")):
        header = [h.replace(tex, plain) for h in header]
    body = [
        _split_row(line.strip().removesuffix(r"\\"), "&")
        for line in rows_text.strip().splitlines()
        if line.strip()
    ]
    # the configuration cell keeps its escapes (\$); the others lose their math-mode dollars
    body = [[row[0], *(c.replace("$^{*}$", "*").replace("$", "") for c in row[1:])] for row in body]
    return _parse_cells(
        [_tex_unescape(h) for h in header],
        body,
        bold=r"\\textbf\{(.*?)\}",
        plus=r"\pm",
        unescape=_tex_unescape,
        missing=_LATEX_MISSING,
    )


# --- shared parsing --------------------------------------------------------------------------


def _number(text: str) -> float:
    text = text.strip()
    return math.nan if text in (_MISSING, _LATEX_MISSING, "") else float(text)


def _parse_cells(
    header: list[str],
    body: list[list[str]],
    bold: str,
    plus: str,
    unescape,
    missing: str = _MISSING,
) -> pd.DataFrame:
    if len(header) < 3 or header[0] != "Configuration" or header[1] != "n":
        raise ValueError(f"unexpected table header {header}")
    delta_col = header[-1] if header[-1].startswith("Δ ") else None
    metrics = header[2:-1] if delta_col else header[2:]
    records, index = [], []
    for cells in body:
        if len(cells) != len(header):
            raise ValueError(f"table row {cells} has {len(cells)} cells, header has {len(header)}")
        index.append(unescape(cells[0]))
        record: dict[str, object] = {"n": int(cells[1])}
        for metric, cell in zip(metrics, cells[2:]):
            best = re.search(bold, cell)
            plain = re.sub(bold, r"\1", cell)
            mean, _, sd = plain.partition(plus)
            record[f"{metric} mean"] = _number(mean if mean.strip() != missing else "")
            record[f"{metric} std"] = _number(sd) if sd else math.nan
            record[f"{metric} best"] = best is not None
        if delta_col:
            metric = delta_col[2:].removesuffix(" (p)")
            cell = cells[-1]
            record["is_baseline"] = cell == "baseline"
            match = re.fullmatch(r"([+-]?[\d.]+|-+)(\*?)(?: \((?:p=)?([\deE.+-]+)\))?", cell)
            if cell != "baseline" and not match:
                raise ValueError(f"cannot read the delta cell {cell!r}")
            record[f"delta {metric}"] = _number(match.group(1)) if match else math.nan
            record[f"p {metric}"] = float(match.group(3)) if match and match.group(3) else math.nan
            record[f"sig {metric}"] = bool(match and match.group(2))
        records.append(record)
    return pd.DataFrame(records, index=pd.Index(index, name="config_key"))


# --- console ---------------------------------------------------------------------------------


def format_console(
    summary: pd.DataFrame | SweepSummary, metrics: Sequence[str] | None = None, decimals: int = 2
) -> str:
    """A plain aligned table for the terminal: ``mean ± 95% CI`` per metric, Δ and p vs baseline."""
    view = _View(summary, metrics, decimals)
    header = ["configuration", "n", *view.metrics]
    if view.has_baseline:
        header += [f"Δ {view.primary}", "p"]
    rows = []
    for i in view.table.index:
        row = [str(view.table.loc[i, "config_key"]), str(view.table.loc[i, "n"])]
        for m in view.metrics:
            mean, ci = view.mean_std(i, m, spread="ci95")
            row.append(mean if ci is None else f"{mean} ± {ci}")
        if view.has_baseline:
            d = view.delta(i)
            row += ["baseline", ""] if d is None else [d[0] + ("*" if d[2] else ""), d[1] or ""]
        rows.append(row)
    widths = [max(len(r[j]) for r in [header, *rows]) for j in range(len(header))]

    def line(cells: list[str]) -> str:
        first = cells[0].ljust(widths[0])
        return "  ".join([first, *(c.rjust(w) for c, w in zip(cells[1:], widths[1:]))]).rstrip()

    out = [line(header), "  ".join("-" * w for w in widths), *(line(r) for r in rows), ""]
    out.append("mean ± 95% CI over seeds (Student t; none for a single seed)")
    if view.has_baseline:
        out.append(
            f"Δ vs baseline {view.baseline}; p: two-sided t-test over seeds "
            f"(paired on equal seeds, else Welch); * p < {view.alpha:g}"
        )
        out += significance_lines(view)
    if isinstance(summary, SweepSummary):
        winner = best(summary, summary.mode)
        if winner is not None:
            how = "" if summary.mode == "max" else f" ({summary.mode})"
            out.append(f"best by {summary.primary}{how}: {winner}")
        out.append(
            f"device-hours: {summary.total_device_hours:.2f} over {summary.n_trials} runs "
            f"({summary.n_finished} finished)"
        )
    return "\n".join(out) + "\n"


def significance_lines(view: "_View") -> list[str]:
    """In words, which configurations differ from the baseline on the primary metric (p < alpha)
    and which do not, one per line with Δ and p: what the table's stars say."""
    groups: dict[str, list[tuple[str, str]]] = {"sig": [], "not": [], "untested": []}
    for i in view.table.index:
        d = view.delta(i)
        if d is None:
            continue
        key = str(view.table.loc[i, "config_key"])
        kind = "untested" if d[1] is None else "sig" if d[2] else "not"
        groups[kind].append((key, "" if d[1] is None else f"Δ {d[0]}  p {d[1]}"))
    titles = {"sig": f"significant (p < {view.alpha:g}) vs the baseline on {view.primary}:",
              "not": f"not significant (p >= {view.alpha:g}): not told apart from seed-to-seed "
                   f"variation with these seeds:",
              "untested": "not tested (one seed, or seeds that cannot be compared):"}
    width = max((len(k) for rows in groups.values() for k, _ in rows), default=0)
    lines = []
    for kind, rows in groups.items():
        if rows:
            lines.append(titles[kind])
            lines += [f"  {key.ljust(width)}  {what}".rstrip() for key, what in rows]
    return lines


def write_tables(
    summary: pd.DataFrame | SweepSummary,
    out_dir: str | Path,
    stem: str = "summary",
    decimals: int = 2,
) -> dict[str, Path]:
    """``<stem>.csv``, ``.md``, ``.tex`` and ``.txt`` (the console table) under ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"csv": write_csv(summary, out / f"{stem}.csv")}
    for kind, text in (
        ("md", to_markdown(summary, decimals=decimals)),
        ("tex", to_latex(summary, decimals=decimals)),
        ("txt", format_console(summary, decimals=decimals)),
    ):
        paths[kind] = out / f"{stem}.{kind}"
        paths[kind].write_text(text, encoding="utf-8")
    return paths
