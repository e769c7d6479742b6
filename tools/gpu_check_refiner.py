#!/usr/bin/env python3
"""Refiner on timm ViTs the tests have never seen (issue 17's done-when), on the GPU machine.

    python3 tools/gpu_check_refiner.py BUILD_DIR OUT_DIR

For each configuration: a timm ViT with random weights, perturbed, saved as timm
saves it (save_for_hf), converted by `recast convert --recipe refiner` with the
defaults (every block, r = 3, K = 3, BN + ReLU6) and with other options; the
refined model's logits through `recast forward` on the CPU and on CUDA in fp32
against timm's logits of the original on the same device (relative error =
max |ours - ref| / max |ref|; the done-when bound is 1e-5). Then the 28 px
one-channel model, refined, is fine-tuned a few steps on Fashion-MNIST on CUDA,
and every refiner tensor of the result is compared with the converted one: all
must have changed (they receive gradients). Writes OUT_DIR/gpu-refiner-check.json
and prints a table.
"""

import json
import sys
from pathlib import Path

import safetensors.torch as st
import timm
import torch

from gpu_common import rel, recast_logits, run_recast  # tools/, beside this script
from make_fixtures import perturb, save_for_hf

BUILD = Path(sys.argv[1])
OUT = Path(sys.argv[2])
WORK = Path("/tmp/recast-gpu-refiner-check")
WORK.mkdir(parents=True, exist_ok=True)
OUT.mkdir(parents=True, exist_ok=True)
torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False
torch.set_grad_enabled(False)
FINETUNE_STEPS = 6

# (name, timm model, its args, input shape, convert options)
CASES = [
    ("vit_small_28px_1ch", "vit_small_patch16_224",
     {"img_size": 28, "patch_size": 4, "in_chans": 1, "num_classes": 10, "depth": 3}, (3, 1, 28, 28), []),
    ("vit_base_48px_noqkvbias", "vit_base_patch16_224",
     {"img_size": 48, "depth": 2, "num_classes": 5, "qkv_bias": False}, (2, 3, 48, 48), []),
    ("vit_tiny_40px_r1_k5_last2", "vit_tiny_patch16_224",
     {"img_size": 40, "patch_size": 8, "depth": 4, "num_classes": 7}, (2, 3, 40, 40),
     ["--expansion", "1", "--kernel", "5", "--layers", r"blocks\.[23]\."]),
]


def check(name, arch, args, shape, options):
    torch.manual_seed(3)
    model = timm.create_model(arch, pretrained=False, **args).eval()
    perturb(model, seed=17, scale=0.05)
    d = WORK / name
    save_for_hf(model, d, model_args=args, safe_serialization=True)
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(9))
    inputs = WORK / f"{name}-inputs.safetensors"
    st.save_file({"pixel_values": x}, str(inputs))
    ref = {"cpu": model(x).float(), "cuda": model.cuda()(x.cuda()).float().cpu()}
    model.cpu()
    refined = WORK / f"{name}-refined"
    report = run_recast(BUILD, "convert", "--recipe", "refiner", "--model", d, "--out", refined,
                        *options)
    (OUT / f"{name}-convert.txt").write_text(report)
    row = {"name": name, "timm_model": arch, "args": args, "options": options}
    for dev in ("cpu", "cuda"):
        ours = recast_logits(BUILD, refined, inputs, WORK / "o.safetensors", dev, "f32")
        plain = recast_logits(BUILD, d, inputs, WORK / "o.safetensors", dev, "f32")
        row[f"refined_vs_timm_{dev}"] = rel(ours, ref[dev])
        row[f"plain_vs_timm_{dev}"] = rel(plain, ref[dev])
    before = st.load_file(str(refined / "model.safetensors"))
    row["refiner_tensors"] = sum(".refiner." in k for k in before)
    row["refiner_parameters"] = sum(v.numel() for k, v in before.items() if ".refiner." in k)
    return row, refined


def finetune_check(refined):
    out = WORK / "finetuned"
    run_recast(BUILD, "finetune", "--model", refined, "--data", "fashion-mnist", "--steps", FINETUNE_STEPS,
               "--batch-size", 64, "--lr", "1e-3", "--warmup", 0, "--device", "cuda", "--eval-batches", 1,
               "--no-progress", "--seed", 0, "--out", out)
    a = st.load_file(str(refined / "model.safetensors"))
    b = st.load_file(str(out / "model.safetensors"))
    rows = {}
    for k, v in a.items():
        if ".refiner." not in k or not v.is_floating_point():
            continue
        if k.endswith("running_mean") or k.endswith("running_var"):
            kind = "statistic"
        else:
            kind = "parameter"
        rows[k] = {"kind": kind, "max_abs_change": (b[k].float() - v.float()).abs().max().item()}
    params = [r for r in rows.values() if r["kind"] == "parameter"]
    return {"steps": FINETUNE_STEPS, "refiner_parameters": len(params),
            "changed": sum(r["max_abs_change"] > 0 for r in params),
            "unchanged": [k for k, r in rows.items() if r["kind"] == "parameter" and r["max_abs_change"] == 0],
            "gate_max_abs": max(b[k].abs().max().item() for k in b if k.endswith(".refiner.gate")),
            "tensors": rows}


def main():
    results = {"torch": torch.__version__, "timm": timm.__version__,
               "device": torch.cuda.get_device_name(0), "models": [], "errors": []}
    first = None
    for case in CASES:
        try:
            row, refined = check(*case)
            results["models"].append(row)
            first = first or refined
        except Exception as e:  # keep the other checks
            results["errors"].append(f"{case[0]}: {e}")
    if first is not None:
        try:
            results["finetune"] = finetune_check(first)
        except Exception as e:
            results["errors"].append(f"finetune: {e}")
    (OUT / "gpu-refiner-check.json").write_text(json.dumps(results, indent=1) + "\n")
    print("| model | options | refined vs timm CPU fp32 | CUDA fp32 | plain vs timm CPU | CUDA | refiner params |")
    print("|---|---|---|---|---|---|---|")
    for r in results["models"]:
        print(f"| {r['name']} | {' '.join(r['options']) or 'defaults'} | {r['refined_vs_timm_cpu']:.2e} "
              f"| {r['refined_vs_timm_cuda']:.2e} | {r['plain_vs_timm_cpu']:.2e} | {r['plain_vs_timm_cuda']:.2e} "
              f"| {r['refiner_parameters']} |")
    if "finetune" in results:
        f = results["finetune"]
        print(f"fine-tune {f['steps']} steps: {f['changed']}/{f['refiner_parameters']} refiner parameters "
              f"changed; max |gate| {f['gate_max_abs']:.3e}; unchanged: {f['unchanged']}")
    for e in results["errors"]:
        print("error:", e)


if __name__ == "__main__":
    main()
