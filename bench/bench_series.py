"""What several dates cost: mapping a series of 1, 3 and 6 dates of one place, side by side.

The dates are the embedded scene (1536 x 768 px) with its own clouds moved about (as no data), one
head trained per series on the same labels (its own feature sets: one date's, or the series'
temporal ones). Then ``segment`` maps each series in a fresh process, the three interleaved over
several rounds; each process's wall time and peak memory (its VmHWM, the high-water mark of its
resident set) are recorded, and the median quoted with its ratio to one date. The heads read
spectra and every encoder stage (``both``, ``t-both``), so the encoder runs on every date.

    python bench/bench_series.py [--model runs/demo/models/atto_demo.onnx] [--rounds 3]

Without --model a random-weight atto encoder is exported first (speed does not depend on weights).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from common import demo_labels, encoder_or_random  # noqa: E402

DAYS = ("20170216", "20170318", "20170427", "20170527", "20170626", "20170726")
MAP = """
import sys
from mpmae_core.runtime.inference.predict import segment
sources = sys.argv[3:]
segment(sources if len(sources) > 1 else sources[0], sys.argv[1], sys.argv[2] + ".tif", head_path=sys.argv[2],
        device="cpu", style=False)
# this process's own peak (VmHWM: per address space, so not the parent's, which ru_maxrss carries over exec)
print([ln for ln in open("/proc/self/status") if ln.startswith("VmHWM")][0].split()[1])
"""


def run_child(args) -> tuple[float, float]:
    """(wall seconds, peak resident MiB) of one child process."""
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", MAP, *args], capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-2000:])
    return wall, int(proc.stdout.split()[-1]) / 1024


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--model")
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    from helpers import series_dates

    from mpmae_core.data import sample
    from mpmae_core.runtime.heads.pixelhead import train_pixel_head

    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        model = encoder_or_random(args.model, work)
        paths, clouds, _ = series_dates(work / "dates", days=DAYS, shifts=(0, 230, 460, 690, 920, 1150),
                                        window=(0, 0, 1536, 768))
        feats, names = demo_labels(str(sample.build(verbose=False)["stack"]), work, 10)
        heads = {}
        for n in (1, 3, 6):
            heads[n] = str(work / f"head{n}.onnx")
            t0 = time.perf_counter()
            res = train_pixel_head([str(x) for x in paths[:n]], model, feats, names, heads[n], device="cpu",
                                   classifiers=["logistic"], series=n > 1,
                                   feature_sets=["t-both"] if n > 1 else ["both"])  # the encoder runs on every date
            print(f"{n} date(s): head {res['chosen']} trained in {time.perf_counter() - t0:.0f} s", flush=True)
        figures = {n: [] for n in heads}
        for r in range(args.rounds):
            for n in heads:
                figures[n].append(run_child([model, heads[n], *[str(x) for x in paths[:n]]]))
                print(f"round {r}: {n} date(s): {figures[n][-1][0]:.1f} s, {figures[n][-1][1]:.0f} MiB", flush=True)
    print(f"\n{platform.processor() or platform.machine()}, {os.cpu_count()} cores; {args.rounds} rounds, median")
    print("\n| dates | map (segment, s) | x one date | peak memory (MiB) | x one date |\n|---|---|---|---|---|")
    base_t = statistics.median(f[0] for f in figures[1])
    base_m = statistics.median(f[1] for f in figures[1])
    for n, f in figures.items():
        t, m = statistics.median(x[0] for x in f), statistics.median(x[1] for x in f)
        print(f"| {n} | {t:.1f} | x{t / base_t:.2f} | {m:.0f} | x{m / base_m:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
