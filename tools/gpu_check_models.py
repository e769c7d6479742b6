#!/usr/bin/env python3
"""Model-zoo checks on the GPU machine, against transformers / timm / torchvision.

    python3 tools/gpu_check_models.py BUILD_DIR OUT_DIR

1. Unseen configurations: models the tests have never seen are built with the
   reference libraries (random weights), saved as those libraries save them,
   and run through `recast forward` on the CPU and on CUDA in fp32; logits are
   compared with the library's own on the same device (relative error = max
   |ours - ref| / max |ref|).
2. bf16 on CUDA: recast's bf16 error against the library's fp32 logits must be
   at most 2x the library's own bf16-vs-fp32 error.
3. Throughput, bf16, side by side on the same weights: GPT-2-small shape (12 x
   768) at batch 8 x 1024 tokens and ViT-S/16 at batch 64, recast (bench_forward)
   vs the library in eager PyTorch (transformers' default attention, timm's
   fused attention). Median of 20 synchronised forwards after 5 warm-ups.
Writes OUT_DIR/gpu-models.json and OUT_DIR/gpu-models.md.
"""

import json
import subprocess
import sys
import time
from pathlib import Path

import safetensors.torch as st
import timm
import torch
import torchvision
import transformers

from gpu_common import rel, recast_logits  # tools/, beside this script
from make_fixtures import llama_config, perturb, save_for_hf

BUILD = Path(sys.argv[1])
OUT = Path(sys.argv[2])
WORK = Path("/tmp/recast-gpu-models")
WORK.mkdir(parents=True, exist_ok=True)
OUT.mkdir(parents=True, exist_ok=True)
torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False


def recast_forward(model_dir, inputs_path, out_path, device, dtype, extra=()):
    return recast_logits(BUILD, model_dir, inputs_path, out_path, device, dtype, extra)


def lib_logits(model, inputs, device, dtype):
    m = model.to(device=device, dtype=dtype)
    kw = {k: (v.to(device=device, dtype=dtype) if v.is_floating_point() else v.to(device))
          for k, v in inputs.items()}
    with torch.no_grad():
        if "pixel_values" in kw:
            out = m(kw["pixel_values"])
        else:
            out = m(**kw).logits
    m.to(device="cpu", dtype=torch.float32)
    return out.float().cpu()


def cases():
    """(name, model, save(model, dir) -> extra recast args, inputs)."""
    g = torch.Generator().manual_seed(11)

    def hf(cfg):
        torch.manual_seed(0)
        return transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation="eager").eval()

    def save_hf(m, d):
        m.save_pretrained(d, safe_serialization=True)
        return []

    def save_timm(args):
        def f(m, d):
            save_for_hf(m, d, model_args=args, safe_serialization=True)
            return []
        return f

    ids = lambda v, b, t: {"input_ids": torch.randint(0, v, (b, t), generator=g)}
    px = lambda *s: {"pixel_values": torch.randn(*s, generator=g)}
    out = []
    cfg = transformers.GPT2Config(vocab_size=200, n_positions=64, n_embd=96, n_layer=3, n_head=6,
                                  resid_pdrop=0, embd_pdrop=0, attn_pdrop=0)
    out.append(("gpt2_3x96", hf(cfg), save_hf, ids(200, 3, 20)))
    cfg = llama_config(1e6, vocab_size=150, hidden_size=96, intermediate_size=160,
                       num_hidden_layers=3, num_attention_heads=6, num_key_value_heads=3,
                       head_dim=16, tie_word_embeddings=False)
    out.append(("llama_gqa_6x3", hf(cfg), save_hf, ids(150, 2, 17)))
    cfg = llama_config(10000.0, vocab_size=120, hidden_size=64, intermediate_size=128,
                       num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                       tie_word_embeddings=True)
    out.append(("llama_mha_tied", hf(cfg), save_hf, ids(120, 2, 9)))
    args = {"num_classes": 12, "in_chans": 3}
    out.append(("resnet34_timm", timm.create_model("resnet34", pretrained=False, **args).eval(),
                save_timm(args), px(2, 3, 48, 40)))
    tv = torchvision.models.resnet50(num_classes=5).eval()

    def save_tv(m, d):
        d.mkdir(parents=True, exist_ok=True)
        st.save_file(m.state_dict(), str(d / "model.safetensors"))
        return ["--arch", "resnet50", "--set", "num_classes=5"]
    out.append(("resnet50_torchvision", tv, save_tv, px(2, 3, 64, 64)))
    args = {"num_classes": 7, "img_size": 64, "depth": 2}
    out.append(("vit_base_timm", timm.create_model("vit_base_patch16_224", pretrained=False, **args).eval(),
                save_timm(args), px(2, 3, 64, 64)))
    args = {"num_classes": 1000}
    out.append(("vit_tiny_224_defaults", timm.create_model("vit_tiny_patch16_224", pretrained=False, **args).eval(),
                save_timm(args), px(2, 3, 224, 224)))
    return out


def check_models(results):
    rows = []
    for name, model, save, inputs in cases():
        perturb(model)
        d = WORK / name
        extra = save(model, d)
        model_path = d / "model.safetensors" if "--arch" in extra else d
        inp = WORK / f"{name}-inputs.safetensors"
        st.save_file(inputs, str(inp))
        row = {"model": name}
        ref_cpu = lib_logits(model, inputs, "cpu", torch.float32)
        row["cpu_fp32"] = rel(recast_forward(model_path, inp, WORK / "o.safetensors", "cpu", "f32", extra), ref_cpu)
        ref = lib_logits(model, inputs, "cuda", torch.float32)
        row["cuda_fp32"] = rel(recast_forward(model_path, inp, WORK / "o.safetensors", "cuda", "f32", extra), ref)
        lib_bf16 = lib_logits(model, inputs, "cuda", torch.bfloat16)
        ours_bf16 = recast_forward(model_path, inp, WORK / "o.safetensors", "cuda", "bf16", extra)
        row["lib_bf16"] = rel(lib_bf16, ref)
        row["ours_bf16"] = rel(ours_bf16, ref)
        row["bf16_ratio"] = row["ours_bf16"] / max(row["lib_bf16"], 1e-30)
        row["ok"] = row["cpu_fp32"] <= 1e-5 and row["cuda_fp32"] <= 1e-4 and row["bf16_ratio"] <= 2.0
        print(json.dumps(row), flush=True)
        rows.append(row)
    results["models"] = rows


def time_lib(fn, make_input, warmup=5, iters=20):
    ts = []
    for i in range(warmup + iters):
        x = make_input(100 + i)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.no_grad():
            fn(x)
        torch.cuda.synchronize()
        if i >= warmup:
            ts.append((time.perf_counter() - t0) * 1e3)
    ts.sort()
    return ts[len(ts) // 2]


def bench_recast(model_dir, batch, seq):
    cmd = [str(BUILD / "bench" / "bench_forward"), "--model", str(model_dir), "--batch", str(batch),
           "--seq", str(seq), "--device", "cuda", "--dtype", "bf16"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(r.stderr)
    return json.loads(r.stdout.strip().splitlines()[-1])


def bench(results):
    rows = []
    # GPT-2 small shape, batch 8 x 1024.
    cfg = transformers.GPT2Config(n_layer=12, n_embd=768, n_head=12, n_positions=1024)
    torch.manual_seed(0)
    m = transformers.GPT2LMHeadModel(cfg).eval()
    d = WORK / "gpt2_small"
    m.save_pretrained(d, safe_serialization=True)
    m = m.to("cuda", torch.bfloat16)
    B, T = 8, 1024

    def make_ids(seed):
        g = torch.Generator().manual_seed(seed)
        return torch.randint(0, cfg.vocab_size, (B, T), generator=g).cuda()
    lib_ms = time_lib(lambda x: m(input_ids=x).logits, make_ids)
    ours = bench_recast(d, B, T)
    rows.append({"model": "GPT-2 small shape (12x768), batch 8x1024, bf16",
                 "library": f"transformers {transformers.__version__} ({m.config._attn_implementation})",
                 "lib_ms": lib_ms, "recast_ms": ours["ms_median"],
                 "lib_tokens_per_s": B * T / lib_ms * 1e3, "recast_tokens_per_s": ours["items_per_s"],
                 "ratio": lib_ms / ours["ms_median"]})
    del m
    torch.cuda.empty_cache()
    # ViT-S/16 at 224, batch 64.
    torch.manual_seed(0)
    v = timm.create_model("vit_small_patch16_224", pretrained=False).eval()
    d = WORK / "vit_small"
    save_for_hf(v, d, model_args={}, safe_serialization=True)
    v = v.to("cuda", torch.bfloat16)

    def make_px(seed):
        g = torch.Generator().manual_seed(seed)
        return torch.randn(64, 3, 224, 224, generator=g).to("cuda", torch.bfloat16)
    lib_ms = time_lib(v, make_px)
    ours = bench_recast(d, 64, 0)
    rows.append({"model": "ViT-S/16 224, batch 64, bf16", "library": f"timm {timm.__version__}",
                 "lib_ms": lib_ms, "recast_ms": ours["ms_median"],
                 "lib_images_per_s": 64 / lib_ms * 1e3, "recast_images_per_s": ours["items_per_s"],
                 "ratio": lib_ms / ours["ms_median"]})
    for r in rows:
        print(json.dumps(r), flush=True)
    results["bench"] = rows


def main():
    results = {"torch": torch.__version__, "transformers": transformers.__version__,
               "timm": timm.__version__, "device": torch.cuda.get_device_name(0),
               "date": time.strftime("%Y-%m-%d")}
    check_models(results)
    bench(results)
    (OUT / "gpu-models.json").write_text(json.dumps(results, indent=2) + "\n")
    lines = [f"# Model zoo on the GPU ({results['device']}, {results['date']})", "",
             f"torch {results['torch']}, transformers {results['transformers']}, timm {results['timm']}. "
             "Command: `python3 tools/gpu_check_models.py build-gpu OUT` (after scripts/gpu-build.sh).", "",
             "## Logits vs the reference library (relative error = max|ours - ref| / max|ref|)", "",
             "| model | CPU fp32 | CUDA fp32 | library bf16 | recast bf16 | ratio |", "|---|---|---|---|---|---|"]
    for r in results["models"]:
        lines.append(f"| {r['model']} | {r['cpu_fp32']:.2e} | {r['cuda_fp32']:.2e} | {r['lib_bf16']:.2e} | "
                     f"{r['ours_bf16']:.2e} | {r['bf16_ratio']:.2f} |")
    lines += ["", "## Forward throughput, bf16, same weights, side by side", "",
              "| workload | library | library ms | recast ms | speed ratio (library / recast) |",
              "|---|---|---|---|---|"]
    for r in results["bench"]:
        lines.append(f"| {r['model']} | {r['library']} | {r['lib_ms']:.2f} | {r['recast_ms']:.2f} | "
                     f"{r['ratio']:.2f} |")
    (OUT / "gpu-models.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
