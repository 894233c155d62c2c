"""Project the GPU time of the paper's full Table 1 from the decode benchmark JSON (CPU only).

Table 1: 30 AIME problems x 3 seeds x 2 tasks (AIME24, AIME25) per method, up to 32K generated
tokens each. Schedule: the 90 sequences of a (method, task) decode as one batch (it fits: the
largest batch at 32K is >= 137 rows for every packed cache), context growing 0 -> 32K, so the run
is 32768 steps at a mean context of 16K (an upper bound: sequences that stop early are counted
to 32K). Step model fitted by least squares to every measured (B, L) run of the method:

    ms(B, L) = a + c * B + b * B * L / 32K

(a: fixed per-step cost, c: per-row cost independent of context (GEMMs, appends, flushes),
b: attention per row at 32K).

    python scripts/project_table1.py benchmarks/results/decode_h200.json
"""

from __future__ import annotations

import argparse
import json

import numpy as np

STEPS, ROWS, TASKS = 32768, 90, 2


def fit(runs: list[dict]) -> tuple[np.ndarray, float]:
    """(a, c, b) and the worst relative error of the fit over the runs."""
    X = np.array([[1.0, r["B"], r["B"] * r["L"] / 32768] for r in runs])
    y = np.array([r["ms_per_step"] for r in runs])
    coef, *_ = np.linalg.lstsq(X, y, rcond=None)
    return coef, float(np.abs(X @ coef / y - 1).max())


def project(res: dict, kinds=("kivi", "kitty", "static")) -> dict:
    out = {}
    for kind in kinds:
        runs = [r for r in res["runs"] if r["kind"] == kind]
        if len(runs) < 3:
            raise ValueError(f"need >= 3 runs of {kind!r} to fit the step model, got {len(runs)}")
        (a, c, b), worst = fit(runs)
        ms = a + c * ROWS + b * ROWS * 0.5  # mean context 16K
        hours = STEPS * ms / 1e3 / 3600
        out[kind] = dict(a=a, c=c, b=b, fit_worst_rel_err=worst, ms_per_step=ms, hours_per_task=hours)
    out["total_gpu_hours"] = TASKS * sum(v["hours_per_task"] for v in out.values())
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("json")
    p = project(json.load(open(ap.parse_args().json)))
    for kind, v in p.items():
        if kind == "total_gpu_hours":
            continue
        print(
            f"{kind}: ms(B,L) = {v['a']:.2f} + {v['c']:.4f} B + {v['b']:.4f} B L/32K "
            f"(worst fit error {100 * v['fit_worst_rel_err']:.0f}%); ms(90, 16K) = {v['ms_per_step']:.1f}; "
            f"{v['hours_per_task']:.2f} h per task"
        )
    print(
        f"Table 1 (3 methods x 2 tasks x 3 seeds x 30 problems x 32K tokens): {p['total_gpu_hours']:.2f} GPU-hours"
    )


if __name__ == "__main__":
    main()
