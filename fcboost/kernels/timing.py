"""GPU timing helpers shared by the kernel benchmarks (torch and triton only)."""

from __future__ import annotations

from collections.abc import Callable

import torch


def bench_us(fn: Callable[[], object], rep_ms: int = 100) -> float:
    """Median microseconds of ``fn()`` (``triton.testing.do_bench``: warm-up excluded, L2 flushed
    between runs)."""
    import triton.testing

    return 1e3 * triton.testing.do_bench(fn, warmup=25, rep=rep_ms, return_mode="median")


def capture_graph(fn: Callable[[], object]) -> torch.cuda.CUDAGraph:
    """A CUDA graph of one ``fn()``; ``fn`` runs twice before the capture (compile, warm-up on a
    side stream, as graph capture requires)."""
    fn()
    torch.cuda.synchronize()
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        fn()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    return g


def graph_us(fn: Callable[[], object], rep_ms: int = 100) -> float:
    """Median microseconds of one ``fn()`` replayed from a CUDA graph (:func:`capture_graph`): what a
    graph-captured decode step pays (launch overhead excluded)."""
    return bench_us(capture_graph(fn).replay, rep_ms)
