"""On the GPU machine: recipe conv on checkpoints no test has seen.

For GPT-2, Llama (grouped-query heads, untied) and T5 v1.1 checkpoints made
here by transformers (random configs, weights perturbed away from their
init), each kind (lightweight, dynamic, dilated) is converted by
`recast convert --recipe conv`, then:
  - decoders: `recast generate` greedy (token by token, the conv windows as
    cache) must equal the argmax of `recast forward` over the same tokens
    (the parallel form), on CPU fp32 and CUDA fp32;
  - T5: the converted model's forward runs on CPU and CUDA and agrees between
    them; the encoder's q/k/v are gone and its cross-attention kept.
Also the unconverted checkpoints against transformers' logits (the loader on
these unseen configs). Prints one line per check and writes conv-check.json.

    python3 tools/gpu_check_conv.py BUILD OUT
"""

import json
import sys
import tempfile
from pathlib import Path

import safetensors.torch as st
import torch
import transformers

from gpu_common import rel, recast_logits, run_recast


def perturb(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.02)


def make(kind, root, seed):
    torch.manual_seed(seed)
    if kind == "gpt2":
        cfg = transformers.GPT2Config(n_layer=3, n_embd=96, n_head=6, vocab_size=211, n_positions=256)
        m = transformers.GPT2LMHeadModel(cfg)
    elif kind == "llama":
        cfg = transformers.LlamaConfig(hidden_size=96, intermediate_size=160, num_hidden_layers=3,
                                       num_attention_heads=6, num_key_value_heads=2, vocab_size=211,
                                       max_position_embeddings=256, tie_word_embeddings=False,
                                       attention_bias=True)
        m = transformers.LlamaForCausalLM(cfg)
    else:
        cfg = transformers.T5Config(d_model=64, d_kv=16, d_ff=128, num_layers=2, num_decoder_layers=3,
                                    num_heads=4, vocab_size=150, feed_forward_proj="gated-gelu",
                                    tie_word_embeddings=False, relative_attention_num_buckets=16,
                                    relative_attention_max_distance=32, decoder_start_token_id=0)
        m = transformers.T5ForConditionalGeneration(cfg)
    perturb(m, seed)
    m.eval()
    d = Path(root) / kind
    m.save_pretrained(d, safe_serialization=True)
    return m, d


def main():
    build, out = Path(sys.argv[1]), Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    results = []
    with tempfile.TemporaryDirectory() as root:
        for seed, arch in enumerate(["gpt2", "llama", "t5"]):
            hf, src = make(arch, root, 100 + seed)
            ids = torch.randint(0, hf.config.vocab_size, (2, 19), generator=torch.Generator().manual_seed(seed))
            inputs = {"input_ids": ids}
            if arch == "t5":
                inputs["decoder_input_ids"] = torch.randint(0, hf.config.vocab_size, (2, 7))
            inp = Path(root) / f"{arch}-in.safetensors"
            st.save_file(inputs, str(inp))
            with torch.no_grad():
                ref = hf(**inputs).logits
            got = recast_logits(build, src, inp, Path(root) / f"{arch}-out.safetensors", "cpu", "f32")
            results.append({"check": "load", "arch": arch, "rel": rel(got, ref)})
            print(f"{arch}: recast vs transformers (unconverted) rel {results[-1]['rel']:.2e}", flush=True)
            for kind, extra in [("lightweight", ["--kernel", "7"]), ("dynamic", ["--kernels", "3,5,9"]),
                                ("dilated", ["--kernel", "4", "--dilation", "3", "--normalize", "none"])]:
                if arch == "t5" and kind == "dynamic":
                    extra = ["--kernel", "5"]
                dst = Path(root) / f"{arch}-{kind}"
                run_recast(build, "convert", "--recipe", "conv", "--model", src, "--out", dst, "--conv", kind,
                           *extra, "-q")
                names = set(st.load_file(str(dst / "model.safetensors")).keys())
                qkv = [n for n in names if any(s in n for s in ("c_attn", "q_proj", "SelfAttention.q."))]
                cross = [n for n in names if "EncDecAttention.q." in n]
                r = {"check": "convert", "arch": arch, "kind": kind, "qkv_left": len(qkv),
                     "cross_attention_kept": len(cross)}
                logits = {}
                for device in ("cpu", "cuda"):
                    logits[device] = recast_logits(build, dst, inp, Path(root) / f"{arch}-{kind}-{device}.safetensors",
                                                   device, "f32")
                r["cpu_vs_cuda_rel"] = rel(logits["cuda"], logits["cpu"])
                if arch != "t5":
                    for device in ("cpu", "cuda"):
                        prompt = ",".join(str(int(t)) for t in ids[0, :5])
                        gen = json.loads(run_recast(build, "generate", "--model", dst, "--prompt-ids", prompt,
                                                    "--max-tokens", "14", "--temperature", "0", "--ignore-eos",
                                                    "--json", "--device", device))
                        seq = [int(t) for t in ids[0, :5]] + [int(t) for t in gen["ids"]]
                        whole = Path(root) / f"{arch}-{kind}-whole.safetensors"
                        st.save_file({"input_ids": torch.tensor([seq])}, str(whole))
                        full = recast_logits(build, dst, whole, Path(root) / f"{arch}-{kind}-full.safetensors",
                                             device, "f32")
                        pred = full[0, 4:-1].argmax(-1).tolist()
                        r[f"greedy_equals_parallel_argmax_{device}"] = pred == seq[5:]
                results.append(r)
                print(json.dumps(r), flush=True)
    (out / "conv-check.json").write_text(json.dumps(results, indent=1) + "\n")
    ok = all(r.get("rel", 0) < 1e-4 for r in results if r["check"] == "load") and all(
        r["qkv_left"] == 0 and r["cpu_vs_cuda_rel"] < 1e-4 and
        all(v for k, v in r.items() if k.startswith("greedy_equals")) and
        (r["arch"] != "t5" or r["cross_attention_kept"] > 0)
        for r in results if r["check"] == "convert")
    print("ALL OK" if ok else "SOME CHECKS FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
