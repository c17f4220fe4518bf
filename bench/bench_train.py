"""Training images/s of a full MP-MAE optimizer step (forward, backward, AdamW), atto 112/16 and 56/8.

On CPU: fp32. On CUDA: bf16 autocast and channels_last, eager and torch.compile side by side.
Also prints how far the rate is from the goal of the paper recipe (about 1.2 M tiles x 200
epochs) in under a day on one GPU, i.e. about 2,780 images/s.

    python bench/bench_train.py [--device cuda] [--tasks all_mod]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from mpmae_core.engine import param_groups
from mpmae_core.models import build_mpmae, random_mask
from mpmae_core import registry

PAPER_IMAGES = 1_200_000 * 200
DAY = 24 * 3600


def fake_batch(tasks, n, hw, device):
    b = {"sentinel2": torch.randn(n, 12, hw, hw, device=device)}
    for t in tasks:
        spec = registry.TASKS[t]
        if t == "sentinel2":
            continue
        if spec.is_pixel:
            b[t] = (torch.randint(0, spec.channels, (n, hw, hw), device=device) if spec.is_classification
                    else torch.randn(n, spec.channels, hw, hw, device=device))
        else:
            b[t] = (torch.randint(0, spec.channels, (n,), device=device) if spec.is_classification
                    else torch.randn(n, spec.channels, device=device))
    return b


def measure(device, tasks, hw, patch, batch, compile_, steps, rounds):
    torch.manual_seed(0)
    model = build_mpmae("atto", tasks, patch_size=patch).to(device)
    cuda = device == "cuda"
    if cuda:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(param_groups(model, 0.05), lr=1e-4, betas=(0.9, 0.95))
    fwd = torch.compile(model) if compile_ else model
    data = fake_batch(model.tasks, batch, hw, device)
    mask = random_mask(batch, hw // patch, hw // patch, 0.6, device=device)

    def step():
        with torch.autocast(device, dtype=torch.bfloat16, enabled=cuda):
            out = fwd(data, mask)
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(3):
        step()
    times = []
    for _ in range(rounds):
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        if cuda:
            torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) / steps)
    return batch / statistics.median(times)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--tasks", default="S2", help="target set or tasks (default S2; all_mod adds 11 decoders)")
    p.add_argument("--batch", type=int, default=0, help="0: 16 on CPU, 512 on CUDA")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    batch = args.batch or (16 if args.device == "cpu" else 512)
    name = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"{name}; torch {torch.__version__}; tasks {args.tasks}; batch {batch}")
    variants = [False, True] if args.device == "cuda" else [False]
    for hw, patch in ((112, 16), (56, 8)):
        for comp in variants:
            ips = measure(args.device, args.tasks, hw, patch, batch, comp, args.steps, args.rounds)
            label = "torch.compile" if comp else "eager"
            print(f"atto {hw}/{patch} {label:<13s} {ips:9.1f} images/s   paper recipe would take "
                  f"{PAPER_IMAGES / ips / DAY:8.1f} days (goal < 1 day: x{PAPER_IMAGES / DAY / ips:.0f} short)")


if __name__ == "__main__":
    main()
