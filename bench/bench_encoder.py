"""Forward+backward images/s of the masked (sparse-semantics) encoder beside a naive baseline.

Naive baseline: FCMAE's dense path, which only zeroes the hidden input pixels and then runs the
plain dense encoder (hidden cells leak into visible ones). Ours re-applies the mask after every
spatial operation so hidden cells cannot leak. Both run in the same process, interleaved round
by round, so the ratio is robust to a noisy shared machine.

    python bench/bench_encoder.py                 # CPU, atto 112/16 and 56/8
    python bench/bench_encoder.py --device cuda   # also the GPU (bf16 autocast, channels_last)
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

from mpmae_core.models import build_encoder, build_mpmae, random_mask
from mpmae_core.models.convnextv2 import upsample_mask


def naive_masked(encoder, x, mask):
    keep = (~mask).unsqueeze(1).to(x.dtype)
    return encoder(x * upsample_mask(keep, encoder.patch_size))


def step_encoder(encoder, x, mask, naive):
    out = naive_masked(encoder, x, mask) if naive else encoder(x, mask)
    out.float().square().mean().backward()


def step_mpmae(model, batch, mask):
    model(batch, mask).loss.backward()


def timed(fn, device, iters):
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / iters


def run(device: str, size_px: int, patch: int, batch: int, rounds: int, iters: int, amp: bool) -> dict:
    torch.manual_seed(0)
    enc = build_encoder("atto", patch_size=patch).to(device)
    model = build_mpmae("atto", "S2", patch_size=patch).to(device)
    if device == "cuda":
        enc = enc.to(memory_format=torch.channels_last)
        model = model.to(memory_format=torch.channels_last)
    x = torch.randn(batch, 12, size_px, size_px, device=device)
    mask = random_mask(batch, size_px // patch, size_px // patch, 0.6, device=device)
    variants = {
        "naive (input masking only)": lambda: step_encoder(enc, x, mask, True),
        "ours (sparse semantics)": lambda: step_encoder(enc, x, mask, False),
        "ours, full MP-MAE S2 step": lambda: step_mpmae(model, {"sentinel2": x}, mask),
    }

    def wrapped(fn):
        def call():
            if amp:
                with torch.autocast("cuda", dtype=torch.bfloat16):
                    fn()
            else:
                fn()
        return call

    times = {k: [] for k in variants}
    for fn in variants.values():  # warm-up
        timed(wrapped(fn), device, 2)
    for _ in range(rounds):
        for name, fn in variants.items():
            times[name].append(timed(wrapped(fn), device, iters))
            enc.zero_grad(set_to_none=True)
            model.zero_grad(set_to_none=True)
    return {name: batch / statistics.median(t) for name, t in times.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--batch", type=int, default=0, help="0: 16 on CPU, 256 on CUDA")
    args = p.parse_args()
    batch = args.batch or (16 if args.device == "cpu" else 256)
    amp = args.device == "cuda"
    where = torch.cuda.get_device_name() if args.device == "cuda" else f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    print(f"device: {args.device} ({where}); torch {torch.__version__}; batch {batch}; "
          f"{'bf16 autocast, channels_last' if amp else 'fp32'}; median of {args.rounds} rounds x {args.iters} steps")
    for size_px, patch in ((112, 16), (56, 8)):
        res = run(args.device, size_px, patch, batch, args.rounds, args.iters, amp)
        base = res["naive (input masking only)"]
        print(f"\natto {size_px}/{patch}, forward+backward, images/s")
        for name, ips in res.items():
            print(f"  {name:<30s} {ips:9.1f}   x{ips / base:.2f} vs naive")


if __name__ == "__main__":
    main()
