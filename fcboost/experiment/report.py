"""The paper's tables from the results store: Table 1, Table 2, the GSM8K sanity check and Section 4.4.

A *cell* is one (row, column) of a table: the values of one metric over *units* (run seeds for
Table 1, mask seeds for the random-mask row of Table 2), shown as ``mean ± std (n=k)``.

Std convention: the **population** standard deviation (``ddof=0``, numpy's default). With AIME's 30
problems every accuracy is a multiple of 3.33 %, and among all triples on that grid only ``ddof=0``
reproduces the paper's ``74.44 ± 1.57`` (73.33, 73.33, 76.67), ``67.78 ± 1.57``, ``65.56 ± 1.57`` and
``63.33 ± 5.44`` (56.67, 63.33, 70.00); the sample std (``ddof=1``) gives 1.92 and 6.67 there. (The
paper's baseline stds 7.78 / 5.56 / 8.89 are reproduced by no std of 3 values on that grid.)

*Average* = per unit, the mean over the table's task columns, then mean ± std over the units present
in every column (so with the same units everywhere its mean is the mean of the column means).
*Δ* = the row's Average mean minus the baseline row's. A cell without records is ``—``, never 0.
Cells and rendering: ``fcboost.experiment.tables``. CLI: ``scripts/make_tables.py`` or
``python -m fcboost.experiment.report``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from fcboost.experiment.publish import log_wandb, update_docs, walltimes_markdown, write_tables
from fcboost.experiment.tables import (
    METHOD_LABELS,
    MISSING,
    STD_DDOF,
    VARIANT_FIELDS,
    Column,
    Row,
    Table,
    build_table,
    orderings_markdown,
    stat_cell,
)

log = logging.getLogger(__name__)


def load_store(results_dir: str | Path) -> pd.DataFrame:
    """The results store as a flat frame: one row per finished job (the last record of a key wins).

    Columns: the record keys, ``variant.<field>`` and ``metrics.<name>`` flattened. Uses
    ``fcboost.experiment.results.load_results`` when present, else reads ``results.jsonl`` itself.
    """
    path = Path(results_dir)
    try:
        from fcboost.experiment.results import load_results
    except ImportError:
        load_results = None
    if load_results is not None:
        df = load_results(path)
    else:
        file = path / "results.jsonl" if path.is_dir() or not path.suffix else path
        if not file.exists():
            raise FileNotFoundError(f"no results store at {file} (expected <results_dir>/results.jsonl)")
        df = pd.read_json(file, lines=True, dtype=False)
    return normalize(df)


def normalize(df: pd.DataFrame) -> pd.DataFrame:
    """Flatten ``variant``/``metrics`` dicts into columns, add ``row`` labels, drop superseded reruns."""
    df = df.copy()
    for col in ("variant", "metrics"):
        if col in df.columns and len(df) and isinstance(df[col].iloc[0], dict):
            flat = pd.json_normalize(df[col].tolist()).add_prefix(f"{col}.")
            flat.index = df.index
            df = pd.concat([df.drop(columns=[col]), flat], axis=1)
    for f in (*VARIANT_FIELDS, "mask_seed"):
        if f"variant.{f}" not in df.columns:
            df[f"variant.{f}"] = None
    if "finished_at" in df.columns and "key" in df.columns and len(df):
        df = df.sort_values("finished_at", kind="stable").drop_duplicates("key", keep="last")
    df["row"] = row_labels(df) if len(df) else pd.Series(dtype=str)
    return df.reset_index(drop=True)


def row_labels(df: pd.DataFrame) -> pd.Series:
    """``METHOD_LABELS[method]``, plus the variant fields that differ between records of that method."""
    labels = pd.Series(index=df.index, dtype=object)
    for method, sub in df.groupby("method", sort=False):
        varying = [f for f in VARIANT_FIELDS if sub[f"variant.{f}"].astype(str).nunique() > 1]
        for idx, rec in sub.iterrows():
            parts = []
            for f in varying:
                v = rec[f"variant.{f}"]
                parts.append(
                    ("V-boost " + ("on" if v else "off"))
                    if f == "boost_values"
                    else str(v)
                    if f == "pair_layout"
                    else f"{f}={v}"
                )
            base = METHOD_LABELS.get(method, str(method))
            labels[idx] = f"{base} [{', '.join(parts)}]" if parts else base
    return labels


PAPER = {  # the paper's numbers (accuracy %), for the write-ups and the notebook
    "table1": {
        "KIVI-KV2*": (67.78, 7.78, 64.44, 5.56, 66.11),
        "Kitty": (72.22, 8.89, 61.11, 7.78, 66.67),
        "FCBoost (Ours)": (74.44, 1.57, 67.78, 1.57, 71.11),
    },
    "table2": {
        "FCBoost (CA mask)": (74.44, 67.78, 71.11),
        "Random mask": (63.33, 65.56, 64.44),
        "KIVI-KV2* (no boost)": (65.56, 66.67, 66.11),
    },
    "gsm8k_sanity": {"FP16": 90.30, "KIVI-KV2*": 88.48, "Kitty": 88.48, "FCBoost (Ours)": 89.84},
    "analysis_4_4": {"jaccard": (0.299, 0.122), "spearman": (0.670, 0.185)},
}
AIME = [Column("aime24", "acc", "AIME24"), Column("aime25", "acc", "AIME25")]
GSM8K = [
    Column("gsm8k", "strict_match", "GSM8K strict-match %"),
    Column("gsm8k", "flexible_extract", "GSM8K flexible-extract %"),
]
FID_COLS = [
    Column("fidelity", "kl", "KL"),
    Column("fidelity", "top1_agree", "top-1 agree %"),
    Column("fidelity", "nll", "NLL"),
]
SMALL_COLS = [
    Column("gsm8k", "strict_match", "GSM8K strict-match %"),
    Column("fidelity", "kl", "KL"),
    Column("fidelity", "top1_agree", "top-1 agree %"),
    Column("fidelity", "nll", "NLL"),
]
T1_ROWS = [Row(("kivi",)), Row(("kitty",)), Row(("fcboost",))]
T2_ROWS = [
    Row(("fcboost",), label="FCBoost (CA mask)"),
    Row(("random_mask",), unit="variant.mask_seed", label="Random mask"),
    Row(("kivi",), label="KIVI-KV2* (no boost)"),
]
G_ROWS = [Row(("fp16",)), Row(("kivi",)), Row(("kitty",)), Row(("fcboost",))]
F_ROWS = [
    *T1_ROWS,
    Row(("magnitude_mask",)),
    Row(("energy_mask",)),
    Row(("random_mask",), unit="variant.mask_seed"),
]
SMALL = "SmolLM2-135M"
# name -> (model, columns, rows, average, baseline, title)
EXPERIMENTS = {
    "table1": (
        "qwen3-8b",
        AIME,
        T1_ROWS,
        True,
        "KIVI-KV2*",
        "Table 1: AIME24/25 accuracy %, mean ± std over seeds",
    ),
    "table2": (
        "qwen3-8b",
        AIME,
        T2_ROWS,
        True,
        "KIVI-KV2* (no boost)",
        "Table 2: CA mask vs random masks (mean ± std over mask seeds) vs no boost",
    ),
    "gsm8k_sanity": ("qwen3-8b", GSM8K, G_ROWS, False, "FP16", "GSM8K sanity check (8-shot CoT)"),
    "table1_small": (
        "smollm2-135m",
        SMALL_COLS,
        T1_ROWS,
        False,
        None,
        f"Table 1 (small, {SMALL}): GSM8K subset (over seeds) + teacher-forced fidelity (seed 0)",
    ),
    "table2_small": (
        "smollm2-135m",
        SMALL_COLS,
        T2_ROWS,
        False,
        None,
        f"Table 2 (small, {SMALL}): CA mask vs random masks (over mask seeds) vs no boost",
    ),
    "gsm8k_small": (
        "smollm2-135m",
        GSM8K,
        G_ROWS,
        False,
        "FP16",
        f"GSM8K sanity (small, {SMALL}, 2 problems)",
    ),
    "fidelity_small": (
        "smollm2-135m",
        FID_COLS,
        F_ROWS,
        False,
        None,
        f"Fidelity (small, {SMALL}): every method and mask vs the fp16 cache, WikiText-2",
    ),
}
ANALYSIS = {"analysis_4_4": "qwen3-8b", "analysis_small": "smollm2-135m"}


def experiment_table(df: pd.DataFrame, name: str) -> Table:
    """The table of experiment ``name`` (a key of ``EXPERIMENTS``) from the normalized store."""
    if name not in EXPERIMENTS:
        raise ValueError(f"unknown table {name!r}; expected one of {sorted(EXPERIMENTS)}")
    model, cols, rows, average, baseline, title = EXPERIMENTS[name]
    sub = df[df["model"] == model] if len(df) else df
    sub = normalize(sub.drop(columns=["row"])) if len(sub) else sub  # variant labels within this model
    t = build_table(sub, name, title, cols, rows, average=average, baseline=baseline)
    t.notes.append(
        f"model {model}; std over units with ddof={STD_DDOF}; n = number of seeds (mask seeds for "
        f"random masks); {MISSING} = no record"
    )
    return t


def analysis_table(result: dict, name: str = "analysis_4_4") -> Table:
    """Section 4.4 from the JSON of ``scripts/analysis_4_4.py`` (``result`` = ``fcboost.masks.analysis.analysis_4_4``).

    Rows: the paper, then one per mask: page Jaccard vs Kitty's per-page top-``n_top`` channels and
    (CA masks) Spearman of CA vs per-pair mean ``|k|``. Stds are the analysis's own (over pages or
    (layer, KV head) cells; with n in the hundreds ddof hardly matters).
    """
    res = result.get("result", result)
    t = Table(
        name,
        f"Section 4.4: static masks vs per-page magnitude top-{res.get('n_top', 16)} ({result.get('model', '?')})",
        [
            Column("4.4", "jaccard", "page Jaccard vs Kitty top-K"),
            Column("4.4", "spearman", "Spearman ρ (CA vs mean abs k)"),
        ],
        digits=3,
        highlight=False,
    )
    pj, ps = PAPER["analysis_4_4"]["jaccard"], PAPER["analysis_4_4"]["spearman"]
    t.rows["Paper (Qwen3-8B, CA)"] = [stat_cell(pj), stat_cell(ps)]
    jac, rho = res.get("page_jaccard", {}), res.get("spearman_ca_vs_magnitude", {})
    for mask in dict.fromkeys([*jac, *rho]):
        t.rows[f"Ours: {mask}"] = [stat_cell(jac.get(mask)), stat_cell(rho.get(mask))]
    t.notes.append(
        "cells: mean ± std (n = pages for Jaccard, (layer, KV head) cells for Spearman); — = not defined"
    )
    return t


def overlap_table(result: dict, name: str) -> Table:
    """Jaccard of the channel sets of two static masks per (layer, KV head), from the 4.4 JSON."""
    res = result.get("result", result)
    t = Table(
        name,
        f"Mask overlap (Jaccard per (layer, KV head), {result.get('model', '?')})",
        [Column("4.4", "jaccard", "Jaccard")],
        digits=3,
        highlight=False,
    )
    for pair, stats in res.get("mask_overlap", {}).items():
        t.rows[pair.replace("|", " vs ")] = [stat_cell(stats)]
    return t


def load_analysis(analysis_dir: str | Path, name: str) -> dict | None:
    """``<analysis_dir>/<name>.json`` written by ``scripts/analysis_4_4.py``, or None."""
    path = Path(analysis_dir) / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def make_tables(
    df: pd.DataFrame, names: Sequence[str], analysis_dir: str | Path | None = None
) -> dict[str, Table]:
    """Tables of ``names`` (keys of ``EXPERIMENTS`` or ``ANALYSIS``); a missing analysis JSON is skipped."""
    out = {}
    for name in names:
        if name in ANALYSIS:
            res = load_analysis(analysis_dir, name) if analysis_dir else None
            if res is None:
                log.warning("no %s.json under %s: skipping the 4.4 table", name, analysis_dir)
                continue
            out[name] = analysis_table(res, name)
            out[f"{name}_overlap"] = overlap_table(res, f"{name}_overlap")
        else:
            out[name] = experiment_table(df, name)
    return out


def block(table: Table) -> str:
    """What a write-up shows between its markers: the table and the paper's orderings checked on it."""
    order = orderings_markdown(table) if table.name in EXPERIMENTS else ""
    return table.to_markdown() + (
        f"\n\nOrderings claimed by the paper, checked per column:\n\n{order}" if order else ""
    )


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="make_tables", description="Tables 1/2, GSM8K and 4.4 from the results store"
    )
    p.add_argument(
        "--results-dir",
        nargs="+",
        default=["runs/results", "experiments/results/smollm2-135m"],
        help="store dir(s) holding results.jsonl (records of all are combined)",
    )
    p.add_argument(
        "--tables", default="all", help=f"comma list of {sorted(EXPERIMENTS) + sorted(ANALYSIS)} or all"
    )
    p.add_argument(
        "--analysis-dir", default="experiments/analysis", help="where scripts/analysis_4_4.py wrote JSON"
    )
    p.add_argument("--out", default="experiments/tables", help="dir for <table>.md/.tex/.csv")
    p.add_argument("--figures", default="experiments/figures", help="dir for PNGs ('' for none)")
    p.add_argument(
        "--update-docs",
        nargs="?",
        const="experiments",
        default=None,
        metavar="DIR",
        help="rewrite the <!-- BEGIN TABLE name --> blocks of DIR/*.md (default experiments)",
    )
    p.add_argument("--wandb", default="offline", choices=["offline", "online", "off"], help="W&B mode")
    p.add_argument(
        "--walltimes", default="experiments/small_walltimes.tsv", help="TSV of the small runs' wall times"
    )
    p.add_argument("--skip-empty", action="store_true", help="leave out tables with no records at all")
    a = p.parse_args(argv)
    names = (
        [*EXPERIMENTS, *ANALYSIS]
        if a.tables == "all"
        else [n.strip() for n in a.tables.split(",") if n.strip()]
    )
    bad = [n for n in names if n not in EXPERIMENTS and n not in ANALYSIS]
    if bad:
        p.error(f"unknown table(s) {bad}; expected names from {sorted(EXPERIMENTS) + sorted(ANALYSIS)}")
    frames = []
    for d in a.results_dir:
        try:
            frames.append(load_store(d))
        except FileNotFoundError as exc:
            log.warning("%s: skipped", exc)
    cols = ["key", "model", "method", "task", "seed", "finished_at"]
    df = (
        normalize(pd.concat([f.drop(columns=["row"]) for f in frames], ignore_index=True)) if frames else None
    )
    if df is None or not len(df):
        log.warning("no records in %s: every cell is missing", a.results_dir)
        df = normalize(pd.DataFrame(columns=cols))
    tables = make_tables(df, names, a.analysis_dir)
    if a.skip_empty:
        tables = {n: t for n, t in tables.items() if any(c.n for cells in t.rows.values() for c in cells)}
    for t in tables.values():
        print(block(t), end="\n\n")
    written = write_tables(tables, a.out, block)
    images: list[Path] = []
    if a.figures:
        from fcboost.experiment.plots import save_figures

        images = save_figures(df, tables, a.figures)
        written += images
    if a.update_docs:
        extra = {"walltimes": walltimes_markdown(a.walltimes)} if Path(a.walltimes).exists() else {}
        written += update_docs(a.update_docs, {n: block(t) for n, t in tables.items()} | extra)
    log_wandb(tables, a.wandb, images=images)
    print("wrote:", *map(str, written), sep="\n  ")
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    sys.exit(main())
