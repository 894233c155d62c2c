"""Table cells and tables: mean ± std (n) over units, Average, Δ, rendered as markdown, LaTeX, CSV.

Std convention: the population standard deviation (``ddof=0``); see ``fcboost.experiment.report``.
A cell without values renders as ``—``, never as 0.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

STD_DDOF = 0
MISSING = "—"


@dataclass(frozen=True)
class Metric:
    """How a metric is shown: ``scale`` (100 for fractions shown as %), direction, header, decimals
    (``None``: the table's)."""

    name: str
    scale: float = 1.0
    higher_is_better: bool = True
    label: str = ""
    digits: int | None = None


METRICS = {
    "acc": Metric("acc", 100.0, True, "acc %"),
    "strict_match": Metric("strict_match", 100.0, True, "strict-match %"),
    "flexible_extract": Metric("flexible_extract", 100.0, True, "flexible-extract %"),
    "top1_agree": Metric("top1_agree", 100.0, True, "top-1 agree %"),
    "kl": Metric("kl", 1.0, False, "KL", digits=4),
    "nll": Metric("nll", 1.0, False, "NLL", digits=4),
    "nll_fp16": Metric("nll_fp16", 1.0, False, "NLL fp16", digits=4),
    "ppl": Metric("ppl", 1.0, False, "PPL"),
}
METHOD_LABELS = {
    "fp16": "FP16",
    "kivi": "KIVI-KV2*",
    "kitty": "Kitty",
    "fcboost": "FCBoost (Ours)",
    "random_mask": "Random mask",
    "magnitude_mask": "Magnitude mask",
    "energy_mask": "Energy mask",
}
VARIANT_FIELDS = ("pair_layout", "boost_values", "n_boost", "n_pairs")


@dataclass(frozen=True)
class Cell:
    """One table cell: ``values`` (already scaled) over units; mean/std (ddof=STD_DDOF)/n."""

    values: tuple[float, ...] = ()

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return float(np.mean(self.values)) if self.values else math.nan

    @property
    def std(self) -> float:
        return float(np.std(self.values, ddof=STD_DDOF)) if self.values else math.nan

    def fmt(self, digits: int = 2, bold: bool = False) -> str:
        if not self.values:
            return MISSING
        body = f"{self.mean:.{digits}f}" if self.n == 1 else f"{self.mean:.{digits}f} ± {self.std:.{digits}f}"
        return f"**{body}** (n={self.n})" if bold else f"{body} (n={self.n})"


@dataclass(frozen=True)
class Column:
    task: str
    metric: str
    header: str


@dataclass(frozen=True)
class Row:
    """The records of ``methods``, one value per ``unit`` column value (mean over other replicates).

    ``label`` replaces the method's label (variant suffixes such as ``[adjacent]`` are kept).
    """

    methods: tuple[str, ...]
    unit: str = "seed"
    label: str | None = None


@dataclass
class Table:
    name: str
    title: str
    columns: list[Column]
    rows: dict[str, list[Cell]] = field(default_factory=dict)
    average: dict[str, Cell] = field(default_factory=dict)
    delta: dict[str, float | None] = field(default_factory=dict)
    baseline: str | None = None
    digits: int = 2
    notes: list[str] = field(default_factory=list)
    highlight: bool = True  # bold the best mean per column (off where "best" has no meaning)

    def headers(self) -> list[str]:
        h = ["Method", *(c.header for c in self.columns)]
        if self.average:
            h.append("Average")
        if self.delta:
            h.append(f"Δ vs {self.baseline}")
        return h

    def best(self) -> dict[int, str]:
        """Column index -> label of the row with the best mean (ties: none bolded)."""
        out = {}
        for j, col in enumerate(self.columns):
            m = METRICS.get(col.metric, Metric(col.metric))
            means = {r: round(c[j].mean, 9) for r, c in self.rows.items() if c[j].n}
            if len(means) > 1:
                best = (max if m.higher_is_better else min)(means.values())
                winners = [r for r, v in means.items() if v == best]
                if len(winners) == 1:
                    out[j] = winners[0]
        return out

    def _digits(self, j: int) -> int:
        m = METRICS.get(self.columns[j].metric)
        return m.digits if m is not None and m.digits is not None else self.digits

    def cells(self, bold: bool = False) -> list[list[str]]:
        best = self.best() if bold else {}
        out = []
        for r, cells in self.rows.items():
            line = [r, *(c.fmt(self._digits(j), bold and best.get(j) == r) for j, c in enumerate(cells))]
            if self.average:
                line.append(self.average[r].fmt(self.digits))
            if self.delta:
                d = self.delta[r]
                line.append(
                    "ref" if r == self.baseline else MISSING if d is None else f"{d:+.{self.digits}f}"
                )
            out.append(line)
        return out

    def to_markdown(self) -> str:
        lines = [f"| {' | '.join(self.headers())} |", "|" + "---|" * len(self.headers())]
        lines += [f"| {' | '.join(c)} |" for c in self.cells(bold=self.highlight)]
        return "\n".join(
            [f"**{self.title}**", "", *lines, *([""] + [f"- {n}" for n in self.notes] if self.notes else [])]
        )

    def to_latex(self) -> str:
        def tex(s: str) -> str:
            s = s.replace("±", r"$\pm$").replace("Δ", r"$\Delta$").replace("%", r"\%").replace("_", r"\_")
            return s.replace("**", "").replace("—", "---")

        best = self.best() if self.highlight else {}
        body = []
        for i, line in enumerate(self.cells()):
            r = list(self.rows)[i]
            cells = [tex(c) for c in line]
            for j, winner in best.items():
                if winner == r:
                    cells[j + 1] = r"\textbf{" + cells[j + 1] + "}"
            body.append(" & ".join(cells) + r" \\")
        cols = "l" + "c" * (len(self.headers()) - 1)
        return "\n".join(
            [
                r"\begin{table}[t]",
                r"\centering",
                r"\caption{" + tex(self.title) + "}",
                r"\begin{tabular}{" + cols + "}",
                r"\toprule",
                " & ".join(tex(h) for h in self.headers()) + r" \\",
                r"\midrule",
                *body,
                r"\bottomrule",
                r"\end{tabular}",
                r"\end{table}",
            ]
        )

    def to_frame(self) -> pd.DataFrame:
        """Long form for CSV: one line per (row, column) with mean, std, n and the values."""
        recs = []
        for r, cells in self.rows.items():
            named = [(c.header, c.metric, cell) for c, cell in zip(self.columns, cells)]
            if self.average:
                named.append(("Average", "average", self.average[r]))
            for header, metric, cell in named:
                recs.append(
                    {
                        "table": self.name,
                        "row": r,
                        "column": header,
                        "metric": metric,
                        "mean": cell.mean if cell.n else None,
                        "std": cell.std if cell.n else None,
                        "n": cell.n,
                        "values": json.dumps([round(v, 6) for v in cell.values]),
                        "delta": self.delta.get(r) if self.delta else None,
                    }
                )
        return pd.DataFrame(recs)


def _unit_values(sub: pd.DataFrame, col: Column, unit: str) -> dict:
    """unit -> value (mean over the other replicates of that unit), scaled for display."""
    m = METRICS.get(col.metric, Metric(col.metric))
    key = f"metrics.{col.metric}"
    sel = sub[(sub["task"] == col.task)]
    if key not in sel.columns:
        return {}
    sel = sel[[unit, key]].dropna()
    return {u: float(v) * m.scale for u, v in sel.groupby(unit)[key].mean().items()}


def build_table(
    df: pd.DataFrame,
    name: str,
    title: str,
    columns: Sequence[Column],
    rows: Sequence[Row],
    average: bool = True,
    baseline: str | None = None,
    digits: int = 2,
) -> Table:
    """Fill a table from the normalized store ``df`` (see ``normalize``).

    Each ``Row`` expands to one table row per distinct ``row`` label of its methods' records (so
    variants such as both pair layouts become separate rows). ``baseline``: a row label for Δ.
    """
    table = Table(name, title, list(columns), baseline=baseline, digits=digits)
    for spec in rows:
        sub = df[df["method"].isin(spec.methods)] if len(df) else df
        labels = list(dict.fromkeys(sub["row"])) if len(sub) else []
        if not labels:  # no records at all: keep the row, every cell missing
            labels = [spec.label or METHOD_LABELS.get(spec.methods[0], spec.methods[0])]
        for label in labels:
            rec = sub[sub["row"] == label] if len(sub) else sub
            base = METHOD_LABELS.get(spec.methods[0], spec.methods[0])
            shown = spec.label + label[len(base) :] if spec.label and label.startswith(base) else label
            per_col = [_unit_values(rec, c, spec.unit) if len(rec) else {} for c in columns]
            table.rows[shown] = [Cell(tuple(v[u] for u in sorted(v, key=str))) for v in per_col]
            if average:
                common = set.intersection(*(set(v) for v in per_col)) if per_col else set()
                table.average[shown] = Cell(
                    tuple(float(np.mean([v[u] for v in per_col])) for u in sorted(common, key=str))
                )
    if baseline is not None:
        ref = (table.average if average else {r: c[0] for r, c in table.rows.items()}).get(baseline)
        for r in table.rows:
            own = table.average[r] if average else table.rows[r][0]
            table.delta[r] = own.mean - ref.mean if ref is not None and ref.n and own.n else None
    return table


def check_order(table: Table, chain: Sequence[str], strict: bool = True) -> list[dict]:
    """Per column: does ``chain[0]`` beat ``chain[1]`` beat ... (better = the metric's direction)?

    Returns one dict per column: ``holds`` (None when a row is missing), the means, the smallest gap
    between neighbours (in the better direction) and the largest std of the cells with n > 1 (else None).
    """
    out = []
    for j, col in enumerate(table.columns):
        sign = 1.0 if METRICS.get(col.metric, Metric(col.metric)).higher_is_better else -1.0
        cells = [table.rows.get(r, [Cell()] * len(table.columns))[j] for r in chain]
        rec = {
            "column": col.header,
            "chain": " > ".join(chain) if strict else " ≥ ".join(chain),
            "means": [c.mean if c.n else None for c in cells],
            "holds": None,
            "min_gap": None,
            "max_std": None,
        }
        if all(c.n for c in cells):
            gaps = [round(sign * (a.mean - b.mean), 9) for a, b in zip(cells, cells[1:])]  # no fp ties
            rec.update(
                holds=all(g > 0 if strict else g >= 0 for g in gaps),
                min_gap=min(gaps),
                max_std=max((c.std for c in cells if c.n > 1), default=None),
            )
        out.append(rec)
    return out


def orderings(table: Table) -> list[dict]:
    """The paper's claims checked on ``table``: FCBoost > Kitty > KIVI; CA > random; random ≤ no boost."""
    rows = list(table.rows)
    checks: list[tuple[list[str], bool]] = []
    if "Kitty" in rows:
        checks += [([r, "Kitty", "KIVI-KV2*"], True) for r in rows if r.startswith("FCBoost")]
    if any(r.startswith("Random mask") for r in rows):
        rand = [r for r in rows if r.startswith("Random mask")]
        checks += [([r, q], True) for r in rows if r.startswith("FCBoost (CA") for q in rand]
        checks += [(["KIVI-KV2* (no boost)", q], False) for q in rand]
    return [c for chain, strict in checks for c in check_order(table, chain, strict)]


def orderings_markdown(table: Table) -> str:
    lines = ["| claim | column | means | holds | smallest gap | largest std |", "|---|---|---|---|---|---|"]
    for c in orderings(table):
        means = ", ".join(MISSING if m is None else f"{m:.3g}" for m in c["means"])
        holds = MISSING if c["holds"] is None else ("yes" if c["holds"] else "**no**")
        gap = MISSING if c["min_gap"] is None else f"{c['min_gap']:+.3g}"
        std = MISSING if c["max_std"] is None else f"{c['max_std']:.3g}"
        lines.append(f"| {c['chain']} | {c['column']} | {means} | {holds} | {gap} | {std} |")
    return "\n".join(lines) if len(lines) > 2 else ""


def stat_cell(s) -> Cell:
    """Cell from (mean, std), {mean, std, n} or None; the values reproduce mean/std exactly (ddof=0)."""
    if s is None:
        return Cell()
    mean, std, n = (
        (s[0], s[1], None) if isinstance(s, (tuple, list)) else (s["mean"], s.get("std", 0.0), s.get("n"))
    )
    return Summary((float(mean), float(std)), int(n) if n else None)


@dataclass(frozen=True)
class Summary(Cell):
    """A cell known only by its summary: ``values`` = (mean, std); ``count`` shown as n."""

    count: int | None = None

    @property
    def n(self) -> int:
        return self.count or 1

    @property
    def mean(self) -> float:
        return self.values[0]

    @property
    def std(self) -> float:
        return self.values[1]

    def fmt(self, digits: int = 2, bold: bool = False) -> str:
        body = f"{self.mean:.{digits}f} ± {self.std:.{digits}f}"
        return (f"**{body}**" if bold else body) + (f" (n={self.count})" if self.count else "")
