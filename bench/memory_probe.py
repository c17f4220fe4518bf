"""Where a runtime command's memory goes: run it in this process and sample, every 20 ms, the
resident set size and GDAL's block cache; print one JSON line.

    python bench/memory_probe.py embed SCENE MODEL OUT [--tile N --overlap N ...]

The fields: ``start_mib`` (Python, numpy, GDAL and the runtime imported, nothing run),
``peak_mib`` (the process's peak RSS, the kernel's VmHWM), ``gdal_cache_peak_mib`` (the most GDAL's
block cache held: input blocks read and output blocks not yet written), ``seconds``. What is
left (peak - start - cache) is ONNX Runtime's session and arena, the tiles and accumulators.
``bench_runtime.py`` runs it in a child process for each raster size.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    import os

    return pages * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


def hwm_mib() -> float:
    """The kernel's peak RSS of this process's memory (VmHWM): unlike ``ru_maxrss``, it does not
    carry over the parent's peak through fork and exec."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


def main(argv: list) -> int:
    import numpy  # noqa: F401 (counted in the start figure: the command imports it anyway)

    from mpmae_core.runtime import __main__ as cli
    from mpmae_core.runtime.inference import predict  # noqa: F401 (as above)
    from mpmae_core.runtime.io.gdal_io import gdal

    start = rss_mib()
    peak = {"cache": 0.0, "rss": start}
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak["cache"] = max(peak["cache"], gdal().GetCacheUsed() / 2 ** 20)
            peak["rss"] = max(peak["rss"], rss_mib())
            time.sleep(0.02)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    t0 = time.perf_counter()
    try:
        code = cli.main(argv)
    finally:
        done.set()
        thread.join()
    seconds = time.perf_counter() - t0
    kernel_peak = hwm_mib()
    print(json.dumps({"start_mib": round(start, 1), "peak_mib": round(max(kernel_peak, peak["rss"]), 1),
                      "gdal_cache_peak_mib": round(peak["cache"], 1), "seconds": round(seconds, 2), "rc": code}))
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
