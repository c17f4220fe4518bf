"""How long a linear head takes: fit and ONNX writing (heads/linear.py).

Synthetic embeddings of the atto encoder's width (320) with 5 classes, from a handful of labels
to the plugin's cap of 2,000 cells per class; the reference is one numpy matrix product of the
same size, so the ratio says how many passes over the data the solver costs.

    python bench/bench_linear.py
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mpmae_core.runtime.heads import linear  # noqa: E402


def best_of(fn, repeat=3):
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main():
    rng = np.random.default_rng(0)
    d, k = 320, 5
    centres = rng.normal(size=(k, d))
    print(f"machine: {os.cpu_count()} cores; embedding width {d}, {k} classes")
    print(f"{'cells/class':>11} {'fit s':>8} {'write ms':>9} {'fit / matmul':>13}")
    for per_class in (5, 20, 100, 500, 2000):
        y = np.repeat(np.arange(k), per_class)
        x = centres[y] * 0.5 + rng.normal(size=(len(y), d))
        fit = best_of(lambda: linear.LinearHead.fit(x, y, [str(i) for i in range(k)]))
        head = linear.LinearHead.fit(x, y, [str(i) for i in range(k)])
        with tempfile.TemporaryDirectory() as tmp:
            write = best_of(lambda: head.save(Path(tmp) / "h.onnx"))
        w = rng.normal(size=(d + 1, k))
        xb = np.hstack([x, np.ones((len(y), 1))])
        matmul = best_of(lambda: (xb @ w, xb.T @ (xb @ w)))
        print(f"{per_class:>11} {fit:>8.3f} {write * 1e3:>9.2f} {fit / matmul:>13.0f}")


if __name__ == "__main__":
    main()
