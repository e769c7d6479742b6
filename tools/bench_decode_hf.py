"""transformers' generate on the same checkpoint as `recast bench decode`: the
peer users would pick, side by side on the GPU machine.

    python3 bench_decode_hf.py MODEL_DIR --context N --new-tokens M [--batch B]
        [--mode eager|static|compile] [--compile-mode reduce-overhead]

Per-token decode time = (time of generate(M + 1 new tokens) - time of
generate(1 new token)) / M, greedy, after warm-up runs (compilation), bf16,
synchronised. `static`: cache_implementation="static"; `compile`: static cache
+ torch.compile of the forward with --compile-mode (falls back through
reduce-overhead, max-autotune-no-cudagraphs, default and reports the mode that
ran). Prints one JSON line.
"""

import argparse
import json
import time

import torch
import transformers as tf


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--context", type=int, default=4096)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--mode", default="eager", choices=["eager", "static", "compile"])
    ap.add_argument("--compile-mode", default="reduce-overhead")
    a = ap.parse_args()
    torch.manual_seed(0)
    model = tf.AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.bfloat16).cuda().eval()
    vocab = model.config.vocab_size
    ids = torch.randint(0, vocab, (a.batch, a.context), device="cuda")
    mask = torch.ones_like(ids)
    kwargs = dict(do_sample=False, pad_token_id=0, eos_token_id=None, attention_mask=mask)
    if a.mode in ("static", "compile"):
        kwargs["cache_implementation"] = "static"
    tried = []
    modes = [a.compile_mode] + [m for m in ("reduce-overhead", "max-autotune-no-cudagraphs", "default") if m != a.compile_mode]
    forward = model.forward

    def timed(n):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.no_grad():
            model.generate(ids, max_new_tokens=n, min_new_tokens=n, **kwargs)
        torch.cuda.synchronize()
        return time.perf_counter() - t0

    ran = None
    for mode in modes if a.mode == "compile" else [None]:
        try:
            if mode is not None:
                torch._dynamo.reset()
                model.forward = torch.compile(forward, mode=mode, fullgraph=False)
            for _ in range(2):  # warm-up (compilation, graph capture)
                timed(a.new_tokens + 1)
            one = min(timed(1) for _ in range(2))
            full = min(timed(a.new_tokens + 1) for _ in range(2))
            ran = mode or a.mode
            break
        except Exception as e:  # a compile mode that fails: say why, try the next
            tried.append({"mode": mode, "error": str(e).splitlines()[0][:200]})
    out = {"peer": "transformers " + tf.__version__, "torch": torch.__version__, "mode": a.mode,
           "batch": a.batch, "context": a.context, "new_tokens": a.new_tokens, "device": torch.cuda.get_device_name(0)}
    if ran is None:
        out["error"] = tried
    else:
        ms = (full - one) * 1000.0 / a.new_tokens
        out.update({"ran": ran, "ms_per_token": ms, "tokens_per_s": a.batch * 1000.0 / ms, "failed_modes": tried})
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
