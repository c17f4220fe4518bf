"""Many scenes: the batch command on 1 and 2 workers of a Dask LocalCluster, against the plain
single-process runtime on the same inputs, in one run (rounds interleaved).

N copies of the embedded scene (1536 x 768 px) are embedded with an atto encoder; each
configuration starts from an empty output folder. The cluster is started once per configuration
and its start-up is timed apart. Figures: seconds and Mpx/s per configuration, the 2-worker speed-up
over 1 worker, and the batch overhead over the plain runtime (1 worker, same tiles).

    python bench/bench_batch.py [--copies 4] [--rounds 2] [--model M.onnx] [--device cpu|cuda]

Pass --device cuda on a GPU machine (with an fp16 model from `training.export --fp16` to compare).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import encoder_or_random  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--copies", type=int, default=4)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--model")
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    from distributed import Client, LocalCluster

    from mpmae_core.data import sample
    from mpmae_core.runtime.batch import run_batch
    from mpmae_core.runtime.inference.predict import embed

    work = Path(tempfile.mkdtemp(prefix="bench-batch-"))
    scene = Path(sample.build(verbose=False)["stack"])
    inputs = work / "in"
    inputs.mkdir()
    for i in range(args.copies):
        shutil.copy(scene, inputs / f"scene{i}.tif")
    model = encoder_or_random(args.model, work)
    mpx = args.copies * 1536 * 768 / 1e6
    times = {"plain runtime, 1 process": [], "batch, 1 worker": [], "batch, 2 workers": []}
    startup = {}
    clusters = {}
    for n in (1, 2):
        t = time.perf_counter()
        c = LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None, silence_logs=50,
                         env={"MMEARTH_ORT_THREADS": str(max(1, (os.cpu_count() or 1) // n))})
        clusters[n] = (c, Client(c))
        startup[n] = time.perf_counter() - t
    try:
        for r in range(args.rounds):
            out = work / f"plain{r}"
            out.mkdir()
            t = time.perf_counter()
            for f in sorted(inputs.glob("*.tif")):
                embed(f, model, out / f"{f.stem}.tif", device=args.device, style=False)
            times["plain runtime, 1 process"].append(time.perf_counter() - t)
            for n in (1, 2):
                t = time.perf_counter()
                run_batch("embed", str(inputs / "*.tif"), model, work / f"batch{n}_{r}", client=clusters[n][1],
                          device=args.device)
                times[f"batch, {n} worker{'s' if n > 1 else ''}"].append(time.perf_counter() - t)
    finally:
        for c, client in clusters.values():
            client.close()
            c.close()
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"{args.copies} scenes of 1536 x 768 px ({mpx:.1f} Mpx), device {args.device}, {os.cpu_count()} CPUs; "
          f"median of {args.rounds} rounds; cluster start-up {startup[1]:.1f} s (1 worker), {startup[2]:.1f} s (2)")
    print("| configuration | seconds | Mpx/s |")
    print("|---|---|---|")
    for k, v in med.items():
        print(f"| {k} | {v:.1f} | {mpx / v:.2f} |")
    print(f"2 workers / 1 worker speed-up: x{med['batch, 1 worker'] / med['batch, 2 workers']:.2f}; "
          f"batch overhead on 1 worker: {100 * (med['batch, 1 worker'] / med['plain runtime, 1 process'] - 1):+.0f} %")
    return 0


if __name__ == "__main__":
    sys.exit(main())
