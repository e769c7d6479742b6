#!/usr/bin/env python3
"""T5 checks on the GPU machine, against transformers and sentencepiece.

    python3 tools/gpu_check_t5.py BUILD_DIR OUT_DIR

1. Configurations the tests have never seen (T5 v1.0 relu, v1.1 gated-silu,
   mT5), random weights perturbed, saved by transformers, a right-padded
   encoder batch: `recast forward` on the CPU and on CUDA in fp32 against
   transformers' logits on the same device (relative error = max |ours - ref| /
   max |ref|), and bf16 on CUDA: recast's error against transformers' fp32
   logits beside transformers' own bf16 error (the target: at most 2x).
2. SentencePiece on texts the tests have never seen: the fixture's model and
   a new BPE model trained here, `recast tokenize` against transformers'
   T5TokenizerFast (ids with </s>).
Writes OUT_DIR/gpu-t5.json and prints a table.
"""

import json
import sys
from pathlib import Path

import safetensors.torch as st
import torch
import transformers

from gpu_common import rel, recast_logits as forward_logits, run_recast  # tools/, beside this script
from make_fixtures import perturb

BUILD = Path(sys.argv[1])
OUT = Path(sys.argv[2])
WORK = Path("/tmp/recast-gpu-t5")
WORK.mkdir(parents=True, exist_ok=True)
OUT.mkdir(parents=True, exist_ok=True)
torch.backends.cuda.matmul.allow_tf32 = False
torch.set_grad_enabled(False)


def recast(*args):
    return run_recast(BUILD, *args)


def recast_logits(d, device, dtype):
    return forward_logits(BUILD, d, d / "inputs.safetensors", WORK / f"{d.name}-{device}-{dtype}.safetensors",
                          device, dtype)


def model_check(name, model):
    torch.manual_seed(7)
    perturb(model, seed=11, scale=0.05)
    model.eval()
    d = WORK / name
    model.save_pretrained(d, safe_serialization=True)
    g = torch.Generator().manual_seed(5)
    V = model.config.vocab_size
    ids = torch.randint(2, V, (3, 17), generator=g)
    am = torch.ones_like(ids)
    am[1, 12:] = 0
    am[2, 7:] = 0
    ids[am == 0] = model.config.pad_token_id
    dec = torch.randint(2, V, (3, 11), generator=g)
    dec[:, 0] = model.config.decoder_start_token_id
    inputs = {"input_ids": ids, "attention_mask": am, "decoder_input_ids": dec}
    st.save_file(inputs, str(d / "inputs.safetensors"))

    def lib(device, dtype):
        m = model.to(device=device, dtype=dtype)
        return m(**{k: v.to(device) for k, v in inputs.items()}).logits.float().cpu()

    ref_cpu = lib("cpu", torch.float32)
    ref_cuda = lib("cuda", torch.float32)
    ref_bf16 = lib("cuda", torch.bfloat16)
    row = {
        "name": name,
        "config": {k: getattr(model.config, k, None) for k in (
            "d_model", "d_kv", "d_ff", "num_layers", "num_decoder_layers", "num_heads",
            "relative_attention_num_buckets", "relative_attention_max_distance",
            "feed_forward_proj", "scale_decoder_outputs", "vocab_size")},
        "cpu_fp32": rel(recast_logits(d, "cpu", "f32"), ref_cpu),
        "cuda_fp32": rel(recast_logits(d, "cuda", "f32"), ref_cuda),
        "cuda_bf16_recast": rel(recast_logits(d, "cuda", "bf16"), ref_cuda),
        "cuda_bf16_transformers": rel(ref_bf16, ref_cuda),
    }
    row["bf16_ratio"] = row["cuda_bf16_recast"] / max(row["cuda_bf16_transformers"], 1e-30)
    return row


TEXTS = [
    "summarize: The committee met on Tuesday and agreed, after a long debate, to postpone the vote.",
    "question: what is 17 * 23? context: 17 * 23 = 391 <extra_id_0> arithmetic.",
    "Zürich, São Paulo, Kraków and Reykjavík — četiri grada; 北京 и Москва.",
    "   spaces\tand\ttabs\n\n and <extra_id_12>newlines<extra_id_3> everywhere   ",
    "def f(x):\n    return {'a': x ** 2, 'b': [1, 2, 3]}  # <unk> </s> <pad>",
    "<extra_id_0><extra_id_1> back-to-back sentinels</s> then text after eos",
    "emoji 🤖🧪 and symbols ∑ ∞ ≈ © ®",
]


def tokenizer_check(d):
    fast = transformers.T5TokenizerFast.from_pretrained(str(d), extra_ids=100)
    rows = []
    for text in TEXTS:
        ref = fast(text).input_ids
        got = json.loads(recast("tokenize", "--model", str(d), "--text", text, "--json"))["ids"]
        rows.append({"text": text, "equal": ref == got, "ref": ref, "recast": got})
    return rows


def main():
    results = {"torch": torch.__version__, "transformers": transformers.__version__,
               "device": torch.cuda.get_device_name(0), "models": [], "tokenizers": {}}
    base = dict(dropout_rate=0.0, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    cases = [
        ("t5_unseen_v10", transformers.T5ForConditionalGeneration(transformers.T5Config(
            vocab_size=120, d_model=48, d_kv=16, d_ff=80, num_layers=3, num_decoder_layers=2,
            num_heads=6, relative_attention_num_buckets=16, relative_attention_max_distance=40,
            feed_forward_proj="relu", **base))),
        ("t5_unseen_silu", transformers.T5ForConditionalGeneration(transformers.T5Config(
            vocab_size=100, d_model=64, d_kv=8, d_ff=96, num_layers=2, num_decoder_layers=3,
            num_heads=8, relative_attention_num_buckets=32, relative_attention_max_distance=128,
            feed_forward_proj="gated-silu", tie_word_embeddings=False, **base))),
        ("mt5_unseen", transformers.MT5ForConditionalGeneration(transformers.MT5Config(
            vocab_size=90, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
            relative_attention_num_buckets=8, relative_attention_max_distance=16, **base))),
    ]
    results["errors"] = []
    for name, model in cases:
        try:
            results["models"].append(model_check(name, model))
        except Exception as e:  # keep the other checks
            results["errors"].append(f"{name}: {e}")
    fixture = Path(__file__).resolve().parent.parent / "tests/fixtures/tokenizer_spiece"
    try:
        results["tokenizers"]["fixture_model"] = tokenizer_check(fixture)
        import sentencepiece as spm
        d = WORK / "spm_bpe"
        d.mkdir(exist_ok=True)
        corpus = d / "corpus.txt"
        corpus.write_text("\n".join(TEXTS * 30 + [t[::-1] for t in TEXTS] * 10) + "\n")
        spm.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(d / "spiece"),
                                       vocab_size=150, model_type="bpe", pad_id=0, eos_id=1,
                                       unk_id=2, bos_id=-1, character_coverage=1.0, num_threads=1,
                                       hard_vocab_limit=False, minloglevel=2)
        corpus.unlink()
        results["tokenizers"]["new_bpe_model"] = tokenizer_check(d)
    except Exception as e:
        results["errors"].append(f"tokenizers: {e}")
    (OUT / "gpu-t5.json").write_text(json.dumps(results, indent=1, ensure_ascii=False) + "\n")
    print("| model | CPU fp32 | CUDA fp32 | CUDA bf16 recast | bf16 transformers | ratio |")
    print("|---|---|---|---|---|---|")
    for r in results["models"]:
        print(f"| {r['name']} | {r['cpu_fp32']:.2e} | {r['cuda_fp32']:.2e} | {r['cuda_bf16_recast']:.2e} "
              f"| {r['cuda_bf16_transformers']:.2e} | {r['bf16_ratio']:.2f} |")
    for k, rows in results["tokenizers"].items():
        print(f"tokenizer {k}: {sum(r['equal'] for r in rows)}/{len(rows)} texts equal")
    for e in results["errors"]:
        print("error:", e)


if __name__ == "__main__":
    main()
