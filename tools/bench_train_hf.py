#!/usr/bin/env python3
"""Training throughput of transformers' GPT2LMHeadModel (or, with --family t5,
T5ForConditionalGeneration) in eager PyTorch.

--family t5: T5Config(d_model=--width, d_kv=width/heads, d_ff=4*width,
num_layers=num_decoder_layers=--layers, relu, tied head, dropout 0); a step
takes random input_ids [B, --seq-len] and labels [B, --target-len] (t5-small's
span-corruption shape: 512 / 114), and tokens/s counts target tokens, as
recast's trainer does for span corruption.

The reference number for recast's own trainer: the same GPT-2 shape, batch,
optimizer and step (forward + loss, backward, grad-norm clip, AdamW step,
zero_grad, one loss sync) run side by side on the same GPU.

What it measures: after --warmup-steps untimed steps, the wall time of
--steps training steps (torch.cuda.synchronize() before and after, timed with
time.perf_counter), reported as tokens/s = B*T*steps/seconds and ms/step, plus
peak memory (torch.cuda.max_memory_allocated), parameter count, final loss,
versions and GPU name.

  - model: GPT2Config(n_layer, n_embd, n_head, vocab_size,
    n_positions=max(seq_len, 1024), all dropouts 0), random init, train mode,
    SDPA attention where transformers supports it (the one used is reported);
  - data: a fresh random token batch [B, T] each step, drawn on the device from
    a seeded torch.Generator (negligible cost); labels = input_ids;
  - precision: bf16 = torch.autocast(bfloat16) around forward + loss, with fp32
    parameters, gradients and optimizer state; f32 = plain fp32 (PyTorch's
    default matmul precision, reported as float32_matmul_precision);
  - optimizer: torch.optim.AdamW, betas (0.9, 0.95), eps 1e-8, two groups:
    weight decay on 2-D+ weights except the embeddings (wte, wpe), none on
    biases, LayerNorm weights and embeddings; PyTorch's default implementation
    (foreach=None, fused=None, i.e. foreach on CUDA); the one used is reported.

Run (GPU machine):
    /opt/torch/.venv/bin/python tools/bench_train_hf.py --dtype bf16 --json out/hf-train.json
Smoke test (CPU, tiny):
    python3 tools/bench_train_hf.py --device cpu --layers 2 --width 64 --heads 4 \
        --vocab 256 --seq-len 32 --batch-size 2 --steps 3 --warmup-steps 1
"""

import argparse
import contextlib
import json
import time

import torch
import transformers
from transformers import GPT2Config, GPT2LMHeadModel


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--width", type=int, default=768)
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--vocab", type=int, default=50257)
    p.add_argument("--seq-len", type=int, default=1024)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--steps", type=int, default=30, help="timed steps")
    p.add_argument("--warmup-steps", type=int, default=5, help="untimed steps first")
    p.add_argument("--dtype", choices=["bf16", "f32"], default="bf16")
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--clip", type=float, default=1.0, help="max grad norm (<= 0: no clipping)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", metavar="OUT", help="write the results as a JSON object here")
    p.add_argument("--device", default="cuda")
    p.add_argument("--family", choices=["gpt2", "t5"], default="gpt2")
    p.add_argument("--target-len", type=int, default=114, help="t5: decoder tokens per example")
    args = p.parse_args()
    if args.steps < 1 or args.warmup_steps < 0:
        p.error("need --steps >= 1 and --warmup-steps >= 0")
    return args


def build_model(args, device):
    if args.family == "t5":
        cfg = transformers.T5Config(vocab_size=args.vocab, d_model=args.width,
                                    d_kv=args.width // args.heads, d_ff=4 * args.width,
                                    num_layers=args.layers, num_decoder_layers=args.layers,
                                    num_heads=args.heads, dropout_rate=0.0,
                                    feed_forward_proj="relu", decoder_start_token_id=0)
        model = transformers.T5ForConditionalGeneration(cfg).float().to(device)
        model.train()
        return model, getattr(model.config, "_attn_implementation", None) or "eager"
    kw = dict(n_layer=args.layers, n_embd=args.width, n_head=args.heads,
              vocab_size=args.vocab, n_positions=max(args.seq_len, 1024),
              resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
              # in-vocabulary special ids keep transformers quiet at tiny
              # --vocab; no effect on the measurement
              bos_token_id=args.vocab - 1, eos_token_id=args.vocab - 1)
    try:
        model = GPT2LMHeadModel(GPT2Config(attn_implementation="sdpa", **kw))
    except (ValueError, ImportError, TypeError):  # SDPA not supported here: default
        model = GPT2LMHeadModel(GPT2Config(**kw))
    model = model.float().to(device)  # fp32 parameters whatever the default dtype
    model.train()
    attn = getattr(model.config, "_attn_implementation", None) or "default"
    return model, attn


def param_groups(model, weight_decay):
    # named_parameters() lists tied weights once: lm_head.weight is wte.weight.
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        is_embedding = ".wte." in name or ".wpe." in name or name == "shared.weight"
        (decay if p.dim() >= 2 and not is_embedding else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def optimizer_impl(opt, params):
    """Which AdamW implementation the step will use: fused, foreach or for-loop."""
    fused, foreach = opt.defaults.get("fused"), opt.defaults.get("foreach")
    if fused:
        return "fused"
    if foreach is None:  # resolved at step() time; ask PyTorch the same way it does
        try:
            from torch.optim.optimizer import _default_to_fused_or_foreach
            _, foreach = _default_to_fused_or_foreach(params, differentiable=False,
                                                      use_fused=False)
        except Exception:
            foreach = params[0].device.type == "cuda"
    return "foreach" if foreach else "for-loop"


def main():
    args = parse_args()
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    torch.manual_seed(args.seed)

    model, attn = build_model(args, device)
    params = [p for p in model.parameters() if p.requires_grad]
    n_params = sum(p.numel() for p in params)
    groups = param_groups(model, args.weight_decay)
    # Default implementation: foreach=None, fused=None (foreach on CUDA).
    opt = torch.optim.AdamW(groups, lr=args.lr, betas=(0.9, 0.95), eps=1e-8)
    impl = optimizer_impl(opt, params)

    if args.dtype == "bf16":
        autocast = lambda: torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    else:
        autocast = contextlib.nullcontext

    gen = torch.Generator(device=device)
    gen.manual_seed(args.seed)
    B, T = args.batch_size, args.seq_len

    targets = args.target_len if args.family == "t5" else T

    def step():
        input_ids = torch.randint(0, args.vocab, (B, T), device=device, generator=gen)
        labels = input_ids
        if args.family == "t5":
            labels = torch.randint(0, args.vocab, (B, targets), device=device, generator=gen)
        with autocast():
            loss = model(input_ids=input_ids, labels=labels).loss
        loss.backward()
        if args.clip > 0:
            torch.nn.utils.clip_grad_norm_(params, args.clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        # One host sync per step, as recast's trainer does to log the loss.
        return loss.item()

    for _ in range(args.warmup_steps):
        step()

    if cuda:
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    for _ in range(args.steps):
        final_loss = step()
    if cuda:
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - t0

    result = {
        "bench": f"hf_{args.family}_train",
        "args": vars(args),
        "tokens_per_s": B * targets * args.steps / seconds,
        "ms_per_step": 1000.0 * seconds / args.steps,
        "seconds": seconds,
        "steps": args.steps,
        "tokens_per_step": B * targets,
        "peak_memory_bytes": torch.cuda.max_memory_allocated(device) if cuda else None,
        "params": n_params,
        "params_decay": sum(p.numel() for p in groups[0]["params"]),
        "params_no_decay": sum(p.numel() for p in groups[1]["params"]),
        "final_loss": final_loss,
        "attn_implementation": attn,
        "optimizer": {"name": "AdamW", "implementation": impl,
                      "foreach": opt.defaults.get("foreach"),
                      "fused": opt.defaults.get("fused"),
                      "betas": [0.9, 0.95], "eps": 1e-8},
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "cuda": torch.version.cuda,
        "device": torch.cuda.get_device_name(device) if cuda else "cpu",
    }

    mem = result["peak_memory_bytes"]
    print(f"hf {type(model).__name__} train {args.layers}x{args.width} h{args.heads} "
          f"V{args.vocab} B{B} T{T} {args.dtype}: {result['tokens_per_s']:.0f} tok/s, "
          f"{result['ms_per_step']:.2f} ms/step, "
          f"peak {'n/a' if mem is None else f'{mem / 2**30:.2f} GiB'}, "
          f"{n_params / 1e6:.2f}M params, final loss {final_loss:.4f} "
          f"[{result['device']}, torch {torch.__version__}, "
          f"transformers {transformers.__version__}, attn {attn}, AdamW {impl}]")

    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
            f.write("\n")


if __name__ == "__main__":
    main()
