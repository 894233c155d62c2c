"""lm-eval's command line with the ``fcboost`` model registered and fcboost's task folder included.

    python -m fcboost.eval.lm_eval_cli --model fcboost \\
        --model_args pretrained=smollm2-135m,method=kitty --tasks fcboost_gsm8k_cot --limit 20

lm-eval 0.4.13 does not load plugins from entry points, so ``lm_eval --model fcboost`` itself works
only when something imports :mod:`fcboost.eval.lm_eval_model` first: passing one of fcboost's task
YAML files by path (``--tasks .../fcboost/eval/tasks/gsm8k_cot.yaml``) does, since lm-eval resolves
the YAML's ``!function utils...`` hooks (which import it) before building the model. This wrapper
works with task names too: it adds ``--include_path`` for ``fcboost/eval/tasks`` unless given.
"""

from __future__ import annotations

import sys

from fcboost.eval import lm_eval_model  # noqa: F401  (registers --model fcboost)
from fcboost.eval.harness import TASKS_DIR


def main(argv: list[str] | None = None) -> None:
    from lm_eval.__main__ import cli_evaluate

    args = list(sys.argv[1:] if argv is None else argv)
    if "--include_path" not in args and any(a.startswith("--tasks") for a in args):
        args += ["--include_path", str(TASKS_DIR)]
    sys.argv = ["lm_eval", *args]
    cli_evaluate()


if __name__ == "__main__":
    main()
