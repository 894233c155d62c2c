"""The library below fcboost/experiment/ imports no hydra, omegaconf, wandb or argparse (DESIGN.md)."""

import ast
from pathlib import Path

FORBIDDEN = {"hydra", "omegaconf", "wandb", "argparse"}
ROOT = Path(__file__).resolve().parents[1] / "fcboost"


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_library_layers_stay_clean():
    files = [p for p in ROOT.rglob("*.py") if "experiment" not in p.relative_to(ROOT).parts]
    assert len(files) > 10
    bad = {str(p.relative_to(ROOT)): sorted(_imports(p) & FORBIDDEN) for p in files}
    assert not {k: v for k, v in bad.items() if v}


def test_ast_scan_finds_forbidden_imports(tmp_path):
    p = tmp_path / "m.py"
    p.write_text("import os\nfrom hydra import compose\nimport wandb.sdk\n")
    assert _imports(p) & FORBIDDEN == {"hydra", "wandb"}
