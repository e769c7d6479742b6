#!/usr/bin/env python3
"""Reference fixtures for recast's model tests.

Builds small, randomly initialised models with transformers and timm (nothing is
downloaded), saves each exactly as its library saves a checkpoint
(`save_pretrained` / timm's `save_for_hf`: config.json + model.safetensors), and
writes beside it the inputs and the reference outputs computed by that library
on the CPU in fp32:

    <out>/<name>/config.json, model.safetensors   the checkpoint
    <out>/<name>/inputs.safetensors               input_ids [+ attention_mask] or pixel_values
    <out>/<name>/outputs.safetensors              logits + intermediates named as
                                                  the checkpoint names the module
    <out>/manifest.json                           library versions, seeds, fixture list

Run on the GPU machine (which has PyTorch, transformers and timm):
    python3 tools/make_fixtures.py tests/fixtures
Every parameter and BatchNorm statistic is perturbed after the library's own
initialisation so that biases, norms and running statistics are all exercised.
"""

import inspect
import json
import sys
from pathlib import Path

import safetensors.torch as st
import timm
import torch
import transformers
try:
    from timm.models._hub import save_for_hf
except ImportError:  # timm < 0.9
    from timm.models.hub import save_for_hf

SEED = 20261123


def perturb(model, seed=SEED, scale=0.02):
    """Adds noise to every parameter and randomises BatchNorm statistics."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)
        for name, b in model.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(torch.randn(b.shape, generator=g) * 0.1)
            elif name.endswith("running_var"):
                b.copy_(torch.rand(b.shape, generator=g) * 0.5 + 0.75)


def capture(model, names):
    """Forward hooks that record the outputs of the named modules."""
    out = {}
    modules = dict(model.named_modules())
    for n in names:
        def hook(_m, _i, o, n=n):
            o = o[0] if isinstance(o, (tuple, list)) else o
            out[n] = o.detach().float().contiguous()
        modules[n].register_forward_hook(hook)
    return out


def save(dir_, inputs, outputs):
    st.save_file({k: v.contiguous() for k, v in inputs.items()}, str(dir_ / "inputs.safetensors"))
    st.save_file({k: v.contiguous() for k, v in outputs.items()}, str(dir_ / "outputs.safetensors"))


def llama_config(rope_theta, **kwargs):
    """LlamaConfig across transformers 4.x (rope_theta) and 5.x (rope_parameters)."""
    if "rope_parameters" in inspect.signature(transformers.LlamaConfig.__init__).parameters:
        kwargs["rope_parameters"] = {"rope_type": "default", "rope_theta": rope_theta}
    else:
        kwargs["rope_theta"] = rope_theta
    return transformers.LlamaConfig(**kwargs)


def causal_lm(out, name, config, layer_prefix, final_norm, mask=True):
    torch.manual_seed(SEED)
    model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager").eval()
    perturb(model)
    d = out / name
    model.save_pretrained(d, safe_serialization=True)
    g = torch.Generator().manual_seed(SEED + 1)
    ids = torch.randint(0, config.vocab_size, (2, 11), generator=g)
    inputs = {"input_ids": ids}
    if mask:  # right padding on the second row
        am = torch.ones_like(ids)
        am[1, 8:] = 0
        inputs["attention_mask"] = am
    names = [f"{layer_prefix}.{i}" for i in range(config.num_hidden_layers)] + [final_norm]
    got = capture(model, names)
    with torch.no_grad():
        logits = model(**inputs).logits.float()
    save(d, inputs, {"logits": logits, **got})
    return name


def timm_model(out, name, arch, model_args, input_shape, intermediates):
    torch.manual_seed(SEED)
    model = timm.create_model(arch, pretrained=False, **model_args).eval()
    perturb(model)
    d = out / name
    save_for_hf(model, d, model_args=model_args, safe_serialization=True)
    g = torch.Generator().manual_seed(SEED + 2)
    x = torch.randn(input_shape, generator=g)
    got = capture(model, intermediates)
    with torch.no_grad():
        logits = model(x).float()
    save(d, {"pixel_values": x}, {"logits": logits, **got})
    return name


TOKENIZER_CORPUS = [
    "The quick brown fox jumps over the lazy dog. It's 2026; we'll see what they've done.",
    "Fellow citizens of the Senate and of the House of Representatives: the state of the Union is strong.",
    "Call me Ishmael. Some years ago, never mind how long precisely, having little money in my purse...",
    "Les élèves ont étudié à l'école; naïve café crème, déjà vu. Über Größe und Maß: straße.",
    "Ελληνικά γράμματα, русский текст, 日本語の文章と東京, 한국어 문장, emoji 😀🚀 and ✓ marks!",
    "Numbers: 1234567890, 3.14159, 1e-5, $100.00, 50% off -- ranges 10-20 & tabs\tand\nnewlines.",
    "    indented code(x) -> y {return x**2;}  # comment\n\n\n    trailing   spaces   ",
]

TOKENIZER_CASES = [
    "Hello world",
    "I'm sure you'll see they've gone, and we'd said it's fine.",
    "The state of the Union in 1790 and 2021: 231 addresses!",
    "naïve café — déjà vu über Größe",
    "東京 日本語 русский Ελληνικά 😀🚀✓",
    "  multiple   spaces\n\nnewlines\t tabs  and trailing   ",
    "before<|endoftext|>after <|endoftext|> again",
    "x" * 40 + " " + "ab" * 30,
    "",
]


def tokenizer_fixture(out):
    """Byte-level BPE trained with `tokenizers` (no download), checked against
    transformers' GPT2Tokenizer (slow, Python) and GPT2TokenizerFast (Rust)."""
    from tokenizers import ByteLevelBPETokenizer
    d = out / "tokenizer_bpe"
    d.mkdir(parents=True, exist_ok=True)
    tok = ByteLevelBPETokenizer()
    tok.train_from_iterator(TOKENIZER_CORPUS * 20, vocab_size=600, min_frequency=2,
                            special_tokens=["<|endoftext|>"], show_progress=False)
    tok.save_model(str(d))
    slow = transformers.GPT2Tokenizer(str(d / "vocab.json"), str(d / "merges.txt"))
    fast = transformers.GPT2TokenizerFast(str(d / "vocab.json"), str(d / "merges.txt"))
    cases = []
    for text in TOKENIZER_CASES:
        ids = slow.encode(text)
        assert ids == fast.encode(text), f"slow and fast GPT-2 tokenizers differ on {text!r}"
        cases.append({"text": text, "ids": ids})
    (d / "cases.json").write_text(json.dumps(cases, ensure_ascii=False, indent=1) + "\n")
    return "tokenizer_bpe"


def main():
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures")
    out.mkdir(parents=True, exist_ok=True)
    if len(sys.argv) > 2 and sys.argv[2] == "--tokenizer-only":
        print("wrote", tokenizer_fixture(out))
        return
    torch.set_grad_enabled(False)
    made = []
    tokenizer_fixture(out)

    made.append(causal_lm(out, "gpt2", transformers.GPT2Config(
        vocab_size=96, n_positions=32, n_embd=48, n_layer=2, n_head=4,
        activation_function="gelu_new", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0),
        "transformer.h", "transformer.ln_f"))
    made.append(causal_lm(out, "llama_gqa", llama_config(
        10000.0, vocab_size=96, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=64,
        rms_norm_eps=1e-6, tie_word_embeddings=False),
        "model.layers", "model.norm"))
    made.append(causal_lm(out, "llama_tied_headdim", llama_config(
        500000.0, vocab_size=80, hidden_size=48, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=1, head_dim=24, max_position_embeddings=64,
        rms_norm_eps=1e-5, tie_word_embeddings=True),
        "model.layers", "model.norm"))

    stages = ["layer1", "layer2", "layer3", "layer4"]
    made.append(timm_model(out, "resnet18_timm", "resnet18",
                           {"num_classes": 10, "in_chans": 1, "channels": [8, 16, 32, 64],
                            "stem_width": 8},
                           (2, 1, 28, 28), stages))
    made.append(timm_model(out, "resnet50_timm", "resnet50",
                           {"num_classes": 7, "in_chans": 3, "channels": [4, 8, 16, 32],
                            "stem_width": 8},
                           (2, 3, 40, 36), stages))
    made.append(timm_model(out, "vit_tiny_timm", "vit_tiny_patch16_224",
                           {"num_classes": 10, "img_size": 32, "depth": 1},
                           (2, 3, 32, 32), ["patch_embed", "blocks.0", "norm"]))
    made.append(timm_model(out, "vit_small_timm", "vit_small_patch16_224",
                           {"num_classes": 5, "img_size": [24, 40], "patch_size": 8, "depth": 2,
                            "embed_dim": 48, "num_heads": 4, "in_chans": 1},
                           (2, 1, 24, 40), ["patch_embed", "blocks.0", "blocks.1", "norm"]))

    manifest = {
        "seed": SEED,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "timm": timm.__version__,
        "fixtures": made,
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    total = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"wrote {len(made)} fixtures to {out} ({total / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
