#!/usr/bin/env python3
"""The other side of bench_conv_attention, on the GPU machine: timm's ConViT
GPSA layer and PyTorch's 3x3 conv2d, forward + backward, bf16, batch 64, at
7x7, 14x14, 28x28, 56x56 and C = 256, 512; median of --iters runs after 3
warm-up runs. One JSON line per size; an out-of-memory size says so.

GPSA(dim=C, num_heads=8) (timm's default heads; C must divide by them) takes
the H*W tokens [B, N, C]. recast's ConvAttention has K^2 = 9 heads, each with
a full C -> C value map (what makes it exactly the convolution), so it does
about 9x GPSA's value FLOPs; the comparison is of the layers as they are.
"""
import argparse
import json
import time

import torch
from timm.models.convit import GPSA


def median_ms(fn, iters):
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) * 1e3)
    times.sort()
    return times[len(times) // 2]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--heads", type=int, default=8)
    args = ap.parse_args()
    for c in (256, 512):
        for size in (7, 14, 28, 56):
            row = {"channels": c, "size": size, "batch": args.batch, "heads": args.heads}
            try:
                measure(row, c, size, args)
            except torch.OutOfMemoryError as e:
                row["error"] = "out of memory: " + str(e).split("\n")[0][:120]
            # The failed run's tensors are gone once the exception is.
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            print(json.dumps(row), flush=True)


def measure(row, c, size, args):
    dev, dt = "cuda", torch.bfloat16
    conv = torch.nn.Conv2d(c, c, 3, padding=1, bias=False).to(dev, dt)
    x = torch.randn(args.batch, c, size, size, device=dev, dtype=dt, requires_grad=True)
    row["torch_conv2d_ms"] = round(median_ms(lambda: conv(x).sum().backward(), args.iters), 3)
    del x
    gpsa = GPSA(c, num_heads=args.heads).to(dev, dt)
    t = torch.randn(args.batch, size * size, c, device=dev, dtype=dt, requires_grad=True)
    row["gpsa_ms"] = round(median_ms(lambda: gpsa(t).sum().backward(), args.iters), 3)
    row["gpsa_ratio"] = round(row["gpsa_ms"] / row["torch_conv2d_ms"], 2)
    row["gpsa_peak_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)

if __name__ == "__main__":
    main()
