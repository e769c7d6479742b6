#!/usr/bin/env python3
"""Today's decoder checkpoints on the GPU machine, against transformers.

    python3 tools/gpu_check_decoders.py BUILD_DIR OUT_DIR

Configurations no test has seen (random weights, perturbed, saved with
save_pretrained): Qwen2 with q/k/v biases, GQA, untied, sliding-window layers
from max_window_layers; Mistral with a window shorter than the input; Llama
3.x with rope_scaling llama3 (a 4.x-style config with rope_theta at the top
level) on inputs past original_max_position_embeddings; YaRN with mscale;
dynamic NTK past max_position_embeddings. Each runs through `recast forward`
on the CPU and on CUDA in fp32 against transformers' logits on the same
device (max |ours - ref| / max |ref|); then `recast convert --recipe t2r` and
`--recipe factorize` (full rank: the logits must stay) run on it and the
converted checkpoint goes through `recast forward` again.
Writes OUT_DIR/gpu-decoders.json.
"""

import json
import shutil
import sys
from pathlib import Path

import safetensors.torch as st
import torch
import transformers

from gpu_common import rel, recast_logits, run_recast  # tools/, beside this script
from make_fixtures import perturb, rope_config

BUILD = Path(sys.argv[1])
OUT = Path(sys.argv[2])
WORK = Path("/tmp/recast-gpu-decoders")
WORK.mkdir(parents=True, exist_ok=True)
OUT.mkdir(parents=True, exist_ok=True)
torch.backends.cuda.matmul.allow_tf32 = False


def cases():
    base = dict(num_hidden_layers=3, rms_norm_eps=1e-5)
    yield "qwen2_gqa_untied_windows", rope_config(transformers.Qwen2Config, {
        "rope_type": "default", "rope_theta": 1e6},
        vocab_size=151, hidden_size=96, intermediate_size=136, num_attention_heads=6, num_key_value_heads=2,
        max_position_embeddings=128, tie_word_embeddings=False, use_sliding_window=True, sliding_window=7,
        max_window_layers=1, **base), 37
    yield "mistral_window_16_of_50", rope_config(transformers.MistralConfig, {
        "rope_type": "default", "rope_theta": 1e6},
        vocab_size=133, hidden_size=80, intermediate_size=120, num_attention_heads=4, num_key_value_heads=1,
        head_dim=32, max_position_embeddings=256, sliding_window=16, **base), 50
    # Llama 3.x as their Hub configs still say it (4.x layout: rope_theta on top, rope_scaling).
    cfg = transformers.LlamaConfig(
        vocab_size=128, hidden_size=64, intermediate_size=112, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=512, tie_word_embeddings=True, rope_theta=500000.0,
        rope_scaling={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                      "original_max_position_embeddings": 24}, **base)
    yield "llama3_2_like_past_original", cfg, 70
    yield "llama_yarn_mscale", rope_config(transformers.LlamaConfig, {
        "rope_type": "yarn", "rope_theta": 10000.0, "factor": 8.0, "original_max_position_embeddings": 20,
        "mscale": 0.8, "mscale_all_dim": 0.6},
        vocab_size=100, hidden_size=64, intermediate_size=96, num_attention_heads=2, num_key_value_heads=2,
        max_position_embeddings=160, **base), 60
    yield "llama_dynamic_past_context", rope_config(transformers.LlamaConfig, {
        "rope_type": "dynamic", "rope_theta": 10000.0, "factor": 4.0},
        vocab_size=100, hidden_size=48, intermediate_size=96, num_attention_heads=4, num_key_value_heads=4,
        max_position_embeddings=24, **base), 61


def lib_logits(model, ids, mask, device):
    model.to(device)
    with torch.no_grad():
        out = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float().cpu()
    model.to("cpu")
    return out


def main():
    rows = []
    for name, cfg, length in cases():
        torch.manual_seed(0)
        model = transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation="eager").eval()
        perturb(model)
        d = WORK / name
        model.save_pretrained(d, safe_serialization=True)
        g = torch.Generator().manual_seed(5)
        ids = torch.randint(0, cfg.vocab_size, (2, length), generator=g)
        mask = torch.ones_like(ids)
        mask[1, length - 6:] = 0
        inp = WORK / f"{name}-inputs.safetensors"
        st.save_file({"input_ids": ids, "attention_mask": mask}, str(inp))
        row = {"model": name, "model_type": cfg.model_type, "length": length}
        ref_cpu = lib_logits(model, ids, mask, "cpu")
        row["cpu_fp32"] = rel(recast_logits(BUILD, d, inp, WORK / "o.safetensors", "cpu", "f32"), ref_cpu)
        ref = lib_logits(model, ids, mask, "cuda")
        row["cuda_fp32"] = rel(recast_logits(BUILD, d, inp, WORK / "o.safetensors", "cuda", "f32"), ref)
        # The recipes on the new family.
        for recipe, args in (("t2r", []), ("factorize", ["--rank-ratio", "1", "--no-dense-fallback"])):
            out = WORK / f"{name}-{recipe}"
            shutil.rmtree(out, ignore_errors=True)
            try:
                run_recast(BUILD, "convert", "--recipe", recipe, "--model", d, "--out", out, "-q", *args)
                logits = recast_logits(BUILD, out, inp, WORK / "o.safetensors", "cpu", "f32")
                row[f"{recipe}_vs_source"] = rel(logits, ref_cpu)
            except RuntimeError as e:
                row[f"{recipe}_error"] = str(e)[-400:]
        row["ok"] = (row["cpu_fp32"] <= 1e-5 and row["cuda_fp32"] <= 1e-4 and "t2r_error" not in row
                     and row.get("factorize_vs_source", 1) <= 1e-4)
        print(json.dumps(row), flush=True)
        rows.append(row)
    result = {"torch": torch.__version__, "transformers": transformers.__version__,
              "device": torch.cuda.get_device_name(0), "models": rows}
    (OUT / "gpu-decoders.json").write_text(json.dumps(result, indent=1) + "\n")
    print("all ok" if all(r["ok"] for r in rows) else "NOT ALL OK")


if __name__ == "__main__":
    main()
