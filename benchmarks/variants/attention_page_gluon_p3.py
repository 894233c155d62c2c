"""EXPERIMENT p3 for ``benchmarks/gluon_probe.py --old-kernel``: the page-at-once kernel of
``attention_page_gluon_p2.py`` launched with ``PSTORE`` (a page's weighted ``P^T`` tiles in their own
shared-memory tiles behind one barrier; see that module)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

_spec = importlib.util.spec_from_file_location(
    "attention_page_gluon_p2", Path(__file__).with_name("attention_page_gluon_p2.py")
)
_p2 = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_p2)


class _WithPStore:
    """``_p2._page_kernel_gluon`` with ``PSTORE=True`` at every launch."""

    def __init__(self, fn):
        self.fn = fn
        self.arg_names = fn.arg_names

    def __getitem__(self, grid):
        launch = self.fn[grid]
        return lambda *a, **kw: launch(*a, **kw, PSTORE=True)


_page_kernel_gluon = _WithPStore(_p2._page_kernel_gluon)
