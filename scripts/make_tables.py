#!/usr/bin/env python
"""Tables 1/2, the GSM8K sanity table and Section 4.4 from the results store (markdown, LaTeX, CSV, PNG, W&B).

    python scripts/make_tables.py --results-dir runs/results --update-docs
    python scripts/make_tables.py --tables table1_small,table2_small --wandb off

Same as ``python -m fcboost.experiment.report``; see ``--help``.
"""

import logging
import sys

from fcboost.experiment.report import main

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    sys.exit(main())
