#!/usr/bin/env python
"""Section 4.4 of the paper: CA mask vs Kitty's per-page magnitude top-16, as JSON for the report.

Composes the Hydra config (``conf/``) with the given overrides, so the model and the calibration
spec are those of ``method=fcboost`` (``method.mask.profile.*``), builds (or loads from
``paths.mask_dir``) the CA masks in both pair layouts, the static magnitude and energy masks and a
random mask, and runs ``fcboost.masks.analysis.analysis_4_4`` on the calibration chunks::

    python scripts/analysis_4_4.py experiment=analysis_small            # SmolLM2, CPU
    python scripts/analysis_4_4.py experiment=analysis_4_4              # Qwen3-8B, GPU

Writes ``<out>/<name>.json`` (name = the experiment) with the command, wall time, spec and result;
``scripts/make_tables.py`` turns it into the 4.4 table.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
import time
from dataclasses import fields
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
log = logging.getLogger("analysis_4_4")


def compose(overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from fcboost.experiment.schema import register

    register()
    with initialize_config_dir(str(ROOT / "conf"), version_base=None):
        return hydra_compose("config", overrides=overrides)


def mask_spec(profile_cfg, **changes):
    """``MaskSpec`` from ``cfg.method.mask.profile`` (``None`` fields keep MaskSpec's default)."""
    from dataclasses import replace

    from fcboost.masks.profile import MaskSpec

    names = {f.name for f in fields(MaskSpec)}
    given = {k: v for k, v in dict(profile_cfg).items() if v is not None and k in names}
    return replace(MaskSpec(**given), **changes)


def run(cfg, page_size: int, n_top: int, random_seed: int) -> dict:
    """Build the masks of the config's calibration spec and return the analysis dict."""
    import torch

    from fcboost.experiment.pipeline import load_model
    from fcboost.masks.analysis import analysis_4_4
    from fcboost.masks.profile import chunks_for, get_or_build_mask

    torch.manual_seed(0)
    loaded = load_model(cfg.model)  # the runner's loader: same model, tokenizer and fingerprint as run.py
    ca = mask_spec(cfg.method.mask.profile, method="ca")
    other = "adjacent" if ca.pair_layout == "rotate_half" else "rotate_half"
    specs = {
        f"ca_{ca.pair_layout}": ca,
        f"ca_{other}": mask_spec(cfg.method.mask.profile, method="ca", pair_layout=other),
        "magnitude": mask_spec(cfg.method.mask.profile, method="magnitude"),
        "energy": mask_spec(cfg.method.mask.profile, method="energy"),
        f"random_s{random_seed}": mask_spec(cfg.method.mask.profile, method="random", seed=random_seed),
    }
    t0 = time.perf_counter()
    masks = {name: get_or_build_mask(cfg.paths.mask_dir, loaded, spec) for name, spec in specs.items()}
    t_masks = time.perf_counter() - t0
    chunks = chunks_for(loaded.tokenizer, ca)
    result = analysis_4_4(loaded.model, loaded.tokenizer, chunks, masks, page_size=page_size, n_top=n_top)
    return {
        "model": cfg.model.name,
        "model_fingerprint": loaded.fingerprint,
        "spec": {
            k: getattr(ca, k) for k in ("data", "n_sequences", "seq_len", "n_pairs", "pair_layout", "top_k")
        },
        "masks": {name: m.id for name, m in masks.items()},
        "mask_seconds": round(t_masks, 1),
        "result": result,
    }


def convert(a, cfg) -> int:
    """Write ``<out>/<name>.json`` from an analysis another command already ran on the same masks."""
    src = json.loads(Path(a.from_json).read_text())
    result = src[a.key] if a.key else src
    if "page_jaccard" not in result:
        raise ValueError(
            f"{a.from_json}[{a.key!r}] is not an analysis_4_4 result (no 'page_jaccard'); "
            f"top-level keys: {sorted(src)[:10]}"
        )
    name = a.name or "analysis"
    out = {
        "model": cfg.model.name,
        "source": f"{a.from_json} [{a.key}]",
        "spec": src.get("spec"),
        "wall_s": src.get("seconds"),
        "result": result,
        "command": "python scripts/analysis_4_4.py " + " ".join(sys.argv[1:]),
    }
    path = Path(a.out) / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1, default=str) + "\n")
    print(f"wrote {path} from {a.from_json}")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. experiment=analysis_small")
    p.add_argument("--page-size", type=int, default=128)
    p.add_argument("--n-top", type=int, default=16, help="Kitty's K: top channels per page")
    p.add_argument("--random-seed", type=int, default=42)
    p.add_argument("--out", default="experiments/analysis", help="output dir for <name>.json")
    p.add_argument("--name", default=None, help="file name (default: the experiment override, else analysis)")
    p.add_argument(
        "--from-json",
        default=None,
        metavar="PATH",
        help="take the result from an existing analysis JSON (e.g. experiments/masks_smollm2/analysis.json)",
    )
    p.add_argument("--key", default=None, help="with --from-json: the entry holding the analysis_4_4 dict")
    a = p.parse_args(argv)
    cfg = compose(a.overrides)
    if a.from_json:
        return convert(a, cfg)
    name = a.name or next(
        (o.split("=", 1)[1] for o in a.overrides if o.split("=")[0].lstrip("+") == "experiment"), "analysis"
    )
    t0 = time.perf_counter()
    out = run(cfg, a.page_size, a.n_top, a.random_seed)
    out["wall_s"] = round(time.perf_counter() - t0, 1)
    out["command"] = "python scripts/analysis_4_4.py " + " ".join(
        shlex.quote(x) for x in (argv or sys.argv[1:])
    )
    path = Path(a.out) / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1, default=str) + "\n")
    r = out["result"]
    for mask, s in r["page_jaccard"].items():
        rho = r["spearman_ca_vs_magnitude"].get(mask)
        print(
            f"{mask:>22}: page Jaccard {s['mean']:.3f} ± {s['std']:.3f}"
            + (f", Spearman {rho['mean']:.3f} ± {rho['std']:.3f}" if rho else "")
        )
    print(f"wrote {path} ({out['wall_s']} s)")
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    sys.exit(main())
