"""Tables 1/2 from fixture records (tests/fixtures/results), checked against hand-computed numbers.

Fixture AIME accuracies are k/30. Population std (ddof=0) throughout, e.g. {73.33, 73.33, 76.67}:
mean 74.444, deviations (-1.111, -1.111, +2.222), variance 7.407/3 = 2.469, std 1.571.
"""

import json
import math
from pathlib import Path

import pandas as pd
import pytest

from fcboost.experiment import report
from fcboost.experiment import tables as tbl
from fcboost.experiment.tables import Cell, Column, Row, build_table

FIXTURE = Path(__file__).parents[1] / "fixtures" / "results"


@pytest.fixture(scope="module")
def df():
    return report.load_store(FIXTURE)


def cells(table, row):
    return table.rows[row]


def test_store_dedupes_reruns_and_flattens(df):
    # 40 lines, one of them superseded by a later record of the same key
    assert len(df) == 39
    assert df["key"].is_unique
    fc = df[(df.method == "fcboost") & (df.task == "aime24") & (df.seed == 0) & (df.model == "qwen3-8b")]
    assert fc["metrics.acc"].tolist() == [pytest.approx(22 / 30)]  # not the superseded 5/30
    assert {"variant.pair_layout", "variant.mask_seed", "metrics.kl"} <= set(df.columns)


def test_cell_population_std_reproduces_paper():
    c = Cell((73.3333333, 73.3333333, 76.6666667))
    assert c.fmt() == "74.44 ± 1.57 (n=3)"
    # the random-mask AIME24 of Table 2: 56.67, 63.33, 70.00 -> 63.33 ± 5.44
    assert Cell((170 / 3, 190 / 3, 70.0)).fmt() == "63.33 ± 5.44 (n=3)"
    assert Cell().fmt() == "—"
    assert Cell((50.0,)).fmt() == "50.00 (n=1)"


def test_table1_means_stds_average_delta(df):
    t = report.experiment_table(df, "table1")
    assert list(t.rows) == ["KIVI-KV2*", "Kitty", "FCBoost (Ours)"]
    kivi24, kivi25 = cells(t, "KIVI-KV2*")
    # KIVI AIME24 {60, 70, 73.33}: mean 67.778; devs -7.778, 2.222, 5.556 -> var (60.49+4.94+30.86)/3 = 32.10
    assert kivi24.mean == pytest.approx(203.3333 / 3, abs=1e-3)
    assert kivi24.std == pytest.approx(math.sqrt(96.2963 / 3), abs=1e-3)
    assert kivi24.n == 3
    # KIVI AIME25 {60, 63.33, 70}: mean 64.444
    assert kivi25.mean == pytest.approx(64.4444, abs=1e-3)
    fc24, fc25 = cells(t, "FCBoost (Ours)")
    assert fc24.fmt() == "74.44 ± 1.57 (n=3)" and fc25.fmt() == "67.78 ± 1.57 (n=3)"
    # FCBoost average per seed: (73.33+66.67)/2 = 70, 70, (76.67+70)/2 = 73.33 -> 71.11 ± 1.57
    assert t.average["FCBoost (Ours)"].fmt() == "71.11 ± 1.57 (n=3)"
    # KIVI average per seed: (60+60)/2=60, (70+63.33)/2=66.67, (73.33+70)/2=71.67 -> mean 66.11
    assert t.average["KIVI-KV2*"].mean == pytest.approx(66.1111, abs=1e-3)
    assert t.delta["FCBoost (Ours)"] == pytest.approx(71.1111 - 66.1111, abs=1e-3)  # +5.00, as in the paper
    # Kitty AIME25 has seeds 0, 1 only: {53.33, 63.33} -> 58.33 ± 5.00 (n=2)
    kitty24, kitty25 = cells(t, "Kitty")
    assert kitty25.fmt() == "58.33 ± 5.00 (n=2)"
    assert kitty24.fmt() == "72.22 ± 6.85 (n=3)"
    # Average over the seeds present in both columns: (63.33+53.33)/2=58.33, (73.33+63.33)/2=68.33
    assert t.average["Kitty"].fmt() == "63.33 ± 5.00 (n=2)"
    assert t.delta["Kitty"] == pytest.approx(63.3333 - 66.1111, abs=1e-3)
    md = t.to_markdown()
    assert (
        "| FCBoost (Ours) | **74.44 ± 1.57** (n=3) | **67.78 ± 1.57** (n=3) | 71.11 ± 1.57 (n=3) | +5.00 |"
        in md
    )
    assert "| KIVI-KV2* |" in md and "| ref |" in md


def test_table2_random_over_mask_seeds(df):
    t = report.experiment_table(df, "table2")
    assert list(t.rows) == ["FCBoost (CA mask)", "Random mask", "KIVI-KV2* (no boost)"]
    r24, r25 = cells(t, "Random mask")
    assert r24.fmt() == "63.33 ± 5.44 (n=3)"  # paper: 63.33 ± 5.44
    assert r25.fmt() == "65.56 ± 1.57 (n=3)"  # paper: 65.56 ± 1.57
    # per mask seed averages 60.00, 65.00, 68.33 -> mean 64.44, var (19.75+0.31+15.12)/3 = 11.73
    avg = t.average["Random mask"]
    assert avg.mean == pytest.approx(64.4444, abs=1e-3)
    assert avg.std == pytest.approx(math.sqrt(35.1852 / 3), abs=1e-3)
    assert t.delta["Random mask"] == pytest.approx(64.4444 - 66.1111, abs=1e-3)
    checks = tbl.orderings(t)
    ca_vs_random = [c for c in checks if c["chain"] == "FCBoost (CA mask) > Random mask"]
    assert [c["holds"] for c in ca_vs_random] == [True, True]
    random_le = [c for c in checks if c["chain"] == "KIVI-KV2* (no boost) ≥ Random mask"]
    assert [c["holds"] for c in random_le] == [True, False]  # 67.78 >= 63.33; 64.44 < 65.56
    assert random_le[1]["min_gap"] == pytest.approx(64.4444 - 65.5556, abs=1e-3)


def test_missing_cells_are_dashes_not_zeros(df):
    t = report.experiment_table(df, "gsm8k_small")
    assert [c.n for c in cells(t, "FP16")] == [0, 0]
    line = next(line for line in t.to_markdown().splitlines() if line.startswith("| FP16 "))
    assert line == "| FP16 | — | — | ref |"
    assert t.delta["Kitty"] is None  # no baseline value -> no delta
    frame = t.to_frame()
    fp16 = frame[frame.row == "FP16"]
    assert fp16["mean"].isna().all() and (fp16["n"] == 0).all()
    # a table with no records at all still lists its rows with every cell missing
    empty = report.experiment_table(df, "gsm8k_sanity")
    assert all(c.n == 0 for row in empty.rows.values() for c in row)


def test_variant_rows_and_lower_is_better(df):
    t = report.experiment_table(df, "table1_small")
    assert list(t.rows) == ["KIVI-KV2*", "Kitty", "FCBoost (Ours) [rotate_half]", "FCBoost (Ours) [adjacent]"]
    strict, kl, agree, nll = cells(t, "FCBoost (Ours) [rotate_half]")
    assert strict.fmt() == "20.00 ± 10.00 (n=2)"  # {30, 10}
    assert kl.mean == pytest.approx(0.10) and agree.mean == pytest.approx(90.0) and kl.std == 0.0
    assert t.best()[1] == "FCBoost (Ours) [rotate_half]"  # lowest KL wins
    checks = {(c["chain"], c["column"]): c["holds"] for c in tbl.orderings(t)}
    assert checks[("FCBoost (Ours) [rotate_half] > Kitty > KIVI-KV2*", "KL")] is True
    assert checks[("FCBoost (Ours) [adjacent] > Kitty > KIVI-KV2*", "KL")] is False
    # tie at 20 vs 20 strict-match is not "better"
    assert checks[("FCBoost (Ours) [rotate_half] > Kitty > KIVI-KV2*", "GSM8K strict-match %")] is False


def test_build_table_generic_and_latex():
    recs = pd.DataFrame(
        [
            {
                "model": "m",
                "method": "kivi",
                "task": "t",
                "seed": s,
                "metrics.acc": v,
                "finished_at": str(s),
                "key": str(s),
            }
            for s, v in enumerate([0.5, 0.7])
        ]
    )
    recs = report.normalize(recs)
    t = build_table(
        recs,
        "x",
        "X_test",
        [Column("t", "acc", "T %")],
        [Row(("kivi",)), Row(("kitty",))],
        average=False,
        baseline="KIVI-KV2*",
    )
    assert t.rows["KIVI-KV2*"][0].fmt() == "60.00 ± 10.00 (n=2)"
    assert t.rows["Kitty"][0].fmt() == "—"
    tex = t.to_latex()
    assert r"60.00 $\pm$ 10.00 (n=2)" in tex and "---" in tex and r"X\_test" in tex and r"T \%" in tex


def test_analysis_table_and_docs_update(tmp_path, df):
    stats = {"mean": 0.25, "std": 0.1, "n": 90}
    res = {
        "model": "smollm2-135m",
        "result": {
            "n_top": 16,
            "page_jaccard": {"ca": stats, "random": stats},
            "spearman_ca_vs_magnitude": {"ca": {"mean": 0.5, "std": 0.2, "n": 90}},
            "mask_overlap": {"ca|random": {"mean": 0.1, "std": 0.05, "n": 90}},
        },
    }
    (tmp_path / "analysis_small.json").write_text(json.dumps(res))
    tables = report.make_tables(df, ["table1", "analysis_small", "analysis_4_4"], tmp_path)
    assert "analysis_4_4" not in tables  # no JSON: skipped, not zero
    a = tables["analysis_small"]
    assert a.rows["Paper (Qwen3-8B, CA)"][0].fmt(3) == "0.299 ± 0.122"
    assert a.rows["Ours: ca"][1].fmt(3) == "0.500 ± 0.200 (n=90)"
    assert a.rows["Ours: random"][1].fmt(3) == "—"  # no CA scores: Spearman not defined, not 0
    assert tables["analysis_small_overlap"].rows["ca vs random"][0].fmt(3) == "0.100 ± 0.050 (n=90)"
    doc = tmp_path / "docs"
    doc.mkdir()
    (doc / "t1.md").write_text(
        "# T1\n<!-- BEGIN TABLE table1 -->\nold\n<!-- END TABLE table1 -->\n"
        "<!-- BEGIN TABLE nope -->\nkeep\n<!-- END TABLE nope -->\n"
        "<!-- BEGIN TABLE analysis_small -->\n<!-- END TABLE analysis_small -->\n"
    )
    assert report.update_docs(doc, {n: report.block(t) for n, t in tables.items()}) == [doc / "t1.md"]
    text = (doc / "t1.md").read_text()
    assert "\nold\n" not in text and "\nkeep\n" in text
    assert "71.11 ± 1.57 (n=3)" in text
    assert "<!-- BEGIN TABLE analysis_small -->\n**Section 4.4" in text  # an empty block is filled too
    assert report.update_docs(doc, {n: report.block(t) for n, t in tables.items()}) == []  # idempotent
    paths = report.write_tables(tables, tmp_path / "out", report.block)
    assert {p.name for p in paths} >= {"table1.md", "table1.tex", "table1.csv", "analysis_small.csv"}
    csv = pd.read_csv(tmp_path / "out" / "table1.csv")
    fc = csv[(csv.row == "FCBoost (Ours)") & (csv.column == "Average")].iloc[0]
    assert fc["mean"] == pytest.approx(71.1111, abs=1e-3) and fc["n"] == 3


def test_cli_runs_on_fixture(tmp_path, capsys):
    rc = report.main(
        [
            "--results-dir",
            str(FIXTURE),
            "--out",
            str(tmp_path),
            "--figures",
            "",
            "--wandb",
            "off",
            "--tables",
            "table1,table2",
        ]
    )
    assert rc == 0
    out = capsys.readouterr().out
    assert "**74.44 ± 1.57** (n=3)" in out and "63.33 ± 5.44 (n=3)" in out
    with pytest.raises(SystemExit):
        report.main(["--tables", "table9", "--wandb", "off"])


def test_bar_chart_png(tmp_path, df):
    from fcboost.experiment.plots import save_figures

    tables = {n: report.experiment_table(df, n) for n in ("table1", "gsm8k_sanity", "table1_small")}
    paths = save_figures(df, tables, tmp_path, mask_dirs=[tmp_path / "none"])
    # gsm8k_sanity has no records: no picture of an empty table
    assert [p.name for p in paths] == ["table1.png", "table1_small.png"]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in paths)


@pytest.mark.slow
def test_wandb_offline_logs_tables(tmp_path, df):
    """W&B offline run holds the table with the rendered numbers (read back from the run directory)."""
    tables = {"table1": report.experiment_table(df, "table1")}
    assert report.log_wandb(tables, "off") is None
    run_dir = report.log_wandb(tables, "offline", dir=tmp_path)
    files = list(Path(run_dir).rglob("table1_*.table.json"))
    assert len(files) == 1
    logged = json.loads(files[0].read_text())
    cols = logged["columns"]
    rows = [dict(zip(cols, r)) for r in logged["data"]]
    fc = next(r for r in rows if r["row"] == "FCBoost (Ours)" and r["column"] == "AIME24")
    assert fc["mean"] == pytest.approx(74.4444, abs=1e-3) and fc["n"] == 3
