"""Where the tables go: ``<out>/<name>.{md,tex,csv}``, the write-ups' marker blocks, W&B.

``update_docs`` rewrites every ``<!-- BEGIN TABLE name --> ... <!-- END TABLE name -->`` block of the
markdown files of a folder, so the numbers in ``experiments/*.md`` are regenerated, never typed.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import Path

import pandas as pd

from fcboost.experiment.tables import Table


def write_tables(tables: dict[str, Table], out_dir: str | Path, render: Callable[[Table], str]) -> list[Path]:
    """``<out_dir>/<name>.{md,tex,csv}`` per table; returns the paths written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, t in tables.items():
        for ext, text in (("md", render(t) + "\n"), ("tex", t.to_latex() + "\n")):
            (out / f"{name}.{ext}").write_text(text)
            paths.append(out / f"{name}.{ext}")
        t.to_frame().to_csv(out / f"{name}.csv", index=False)
        paths.append(out / f"{name}.csv")
    return paths


MARKER = re.compile(
    r"(?P<begin><!-- BEGIN TABLE (?P<name>[\w.-]+) -->\n)(?:.*?\n)?(?P<end><!-- END TABLE (?P=name) -->)",
    re.S,
)


def update_docs(docs_dir: str | Path, texts: dict[str, str]) -> list[Path]:
    """Rewrite every ``<!-- BEGIN TABLE name --> ... <!-- END TABLE name -->`` block of ``docs_dir/*.md``.

    ``texts``: name -> the block's new content; blocks of other names are left as they are.
    Returns the files that changed.
    """
    changed = []
    for md in sorted(Path(docs_dir).glob("*.md")):
        src = md.read_text()
        new = MARKER.sub(
            lambda m: m["begin"] + texts[m["name"]] + "\n" + m["end"] if m["name"] in texts else m.group(0),
            src,
        )
        if new != src:
            md.write_text(new)
            changed.append(md)
    return changed


def walltimes_markdown(path: str | Path) -> str:
    """The wall-time log of the small runs (TSV: experiment, rc, wall_s, finished, command) as markdown."""
    df = pd.read_csv(path, sep="\t")
    lines = ["| experiment | command | exit | wall time | finished (UTC) |", "|---|---|---|---|---|"]
    for r in df.itertuples(index=False):
        lines.append(f"| {r.experiment} | `{r.command}` | {r.rc} | {r.wall_s / 60:.1f} min | {r.finished} |")
    return "\n".join(lines)


def log_wandb(
    tables: dict[str, Table],
    mode: str = "offline",
    project: str = "fcboost",
    dir: str | Path = "runs",
    images: Sequence[Path] = (),
) -> Path | None:
    """Log each table (long form, ``table/<name>``) and the pictures to one W&B run (job type ``report``).

    Goes through ``fcboost.experiment.tracking.WandbTracker`` (which never raises). ``mode``:
    ``offline``/``online``; ``off`` or ``disabled`` logs nothing. Returns the run directory, or None.
    """
    if mode in ("off", "disabled") or not tables:
        return None
    from fcboost.experiment.tracking import WandbTracker

    tracker = WandbTracker(
        project,
        name="tables",
        group="report",
        job_type="report",
        config={"tables": sorted(tables)},
        mode=mode,
        dir=str(dir),
    )
    for name, t in tables.items():
        tracker.log_table(f"table/{name}", t.to_frame().to_dict("records"))

    def _images():
        import wandb

        tracker.run.log({f"figure/{Path(p).stem}": wandb.Image(str(p)) for p in images})

    if images:
        tracker._guard("images", _images)
    run_dir = getattr(tracker, "run_dir", None)
    tracker.finish()
    return Path(run_dir) if run_dir else None
