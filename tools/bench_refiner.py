#!/usr/bin/env python3
"""The other side of bench_refiner, on the GPU machine: the same one-block ViT
(timm's VisionTransformer, depth 1) plain and with its attention's maps
refined, written in PyTorch as a user would (explicit softmax maps; 1x1 conv
H -> 3H + BN + ReLU6, depthwise 3x3 + BN + ReLU6, 1x1 3H -> H + BN, a gated
residual; maps applied to V), in eager mode and under torch.compile.
Forward + backward (loss = logits.sum()), bf16 autocast, fp32 weights, the
sizes of bench_refiner: ViT-S/16 at 224 px (batch 64) and the Fashion-MNIST
ViT-tiny (patch 4 on 28 px, batch 256). Median of --iters runs after 3
warm-up runs; one JSON line per size; peak memory of one step.
"""
import argparse
import json
import time

import timm
import torch
from torch import nn


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


class RefinedAttention(nn.Module):
    """timm's Attention with the softmax maps refined before they weigh v."""

    def __init__(self, attn, expansion=3, kernel=3, channels_last=False):
        super().__init__()
        self.channels_last = channels_last
        self.qkv, self.proj, self.heads = attn.qkv, attn.proj, attn.num_heads
        self.scale = attn.scale
        h, e = self.heads, self.heads * expansion
        self.expand, self.expand_norm = nn.Conv2d(h, e, 1), nn.BatchNorm2d(e)
        self.local = nn.Conv2d(e, e, kernel, padding=kernel // 2, groups=e)
        self.local_norm = nn.BatchNorm2d(e)
        self.reduce, self.reduce_norm = nn.Conv2d(e, h, 1), nn.BatchNorm2d(h)
        self.gate = nn.Parameter(torch.full((h,), 0.5))

    def forward(self, x, attn_mask=None, **kwargs):  # timm passes is_causal
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        a = (q @ k.transpose(-2, -1) * self.scale).softmax(-1)
        r = a.contiguous(memory_format=torch.channels_last) if self.channels_last else a
        r = torch.clamp(self.expand_norm(self.expand(r)), 0, 6)
        r = torch.clamp(self.local_norm(self.local(r)), 0, 6)
        r = self.reduce_norm(self.reduce(r))
        a = a + self.gate.view(1, -1, 1, 1) * r
        return self.proj((a @ v).transpose(1, 2).reshape(b, n, c))


def model(size, refined, channels_last=False):
    torch.manual_seed(0)
    m = timm.create_model("vit_small_patch16_224", pretrained=False, img_size=size["img"],
                          patch_size=size["patch"], in_chans=size["chans"], embed_dim=size["width"],
                          depth=1, num_heads=size["heads"], num_classes=10)
    if refined:
        m.blocks[0].attn = RefinedAttention(m.blocks[0].attn, channels_last=channels_last)
    return m.cuda().train()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--profile", help="write the eager refined step's top CUDA kernels here")
    args = ap.parse_args()
    tables = []
    sizes = [dict(name="vit_s16_224", img=224, patch=16, chans=3, width=384, heads=6, batch=64),
             dict(name="vit_tiny_fm", img=28, patch=4, chans=1, width=192, heads=3, batch=256)]
    for size in sizes:
        x = torch.randn(size["batch"], size["chans"], size["img"], size["img"], device="cuda")
        row = {"size": size["name"], "batch": size["batch"], "torch": torch.__version__,
               "timm": timm.__version__}
        for refined, compiled, layout in ((False, False, ""), (False, True, ""), (True, False, ""),
                                          (True, True, ""), (True, False, "_channels_last")):
            if True:
                m = model(size, refined, channels_last=bool(layout))
                f = torch.compile(m) if compiled else m

                def step():
                    with torch.autocast("cuda", dtype=torch.bfloat16):
                        loss = f(x).float().sum()
                    loss.backward()

                key = ("refined" if refined else "plain") + ("_compiled" if compiled else "_eager") + layout
                try:
                    row[key + "_ms"] = median_ms(step, args.iters)
                    torch.cuda.reset_peak_memory_stats()
                    step()
                    torch.cuda.synchronize()
                    row[key + "_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
                except Exception as e:  # a failed compile is reported, the run goes on
                    row[key + "_error"] = str(e).splitlines()[0][:200]
                    continue
                if args.profile and refined and not compiled and not layout:
                    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
                        for _ in range(5):
                            step()
                        torch.cuda.synchronize()
                    tables.append(f"== {size['name']} refined eager, 5 steps\n" +
                                  prof.key_averages().table(sort_by="cuda_time_total", row_limit=20))
        for mode in ("eager", "compiled"):
            if f"refined_{mode}_ms" in row and f"plain_{mode}_ms" in row:
                row[f"ratio_{mode}"] = row[f"refined_{mode}_ms"] / row[f"plain_{mode}_ms"]
        print(json.dumps(row), flush=True)
    if args.profile:
        with open(args.profile, "w") as f:
            f.write("\n\n".join(tables) + "\n")


if __name__ == "__main__":
    main()
