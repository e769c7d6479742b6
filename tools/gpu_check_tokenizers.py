#!/usr/bin/env python3
"""Tokenizers no test has seen, against transformers, through `recast tokenize`.

    python3 tools/gpu_check_tokenizers.py BUILD_DIR OUT_DIR [GPT2_VOCAB_DIR]

Trains, with `tokenizers` and `sentencepiece` on the GPU machine (nothing
downloaded), the same styles as the test fixtures (GPT-2 byte-level; Llama 3
regex + ByteLevel + BOS template; Qwen2 NFC; Llama 2 SentencePiece BPE with
byte fallback as tokenizer.json and as a tokenizer.model-only directory; T5
Unigram) but on another corpus (this repository's documentation: prose, code,
tables) with other vocabulary sizes, and tokenizes texts the fixtures do not
hold (lines of the source tree, the fixtures' hard cases) with `recast
tokenize --json` (with and without --no-special) beside transformers' ids. A
directory holding only tokenizer.model and a config.json of model_type
mistral (no tokenizer_config.json) must get the BOS that MistralTokenizer's
defaults add. With GPT2_VOCAB_DIR (scripts/fetch-data.sh gpt2-vocab), GPT-2's
real vocabulary on the same texts.
Writes OUT_DIR/gpu-tokenizers.json; prints "all ok" when every id matches.
"""

import json
import random
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import transformers

from make_fixtures import HF_TOKENIZER_CASES, hf_tokenizer_fixtures  # tools/, beside this script

BUILD = Path(sys.argv[1])
OUT = Path(sys.argv[2])
GPT2_VOCAB = Path(sys.argv[3]) if len(sys.argv) > 3 else None
WORK = Path("/tmp/recast-gpu-tokenizers")
ROOT = Path(__file__).resolve().parent.parent


def corpus_and_texts():
    """Training lines from docs/ and README; texts from the source tree."""
    lines = []
    for f in sorted([ROOT / "README.md", *(ROOT / "docs").rglob("*.md")]):
        lines += [ln for ln in f.read_text(encoding="utf-8").splitlines() if ln.strip()]
    rng = random.Random(7)
    sources = sorted([*(ROOT / "src").rglob("*.cpp"), *(ROOT / "scripts").glob("*.sh")])
    texts = []
    for f in rng.sample(sources, 12):
        body = f.read_text(encoding="utf-8").splitlines()
        start = rng.randrange(max(1, len(body) - 6))
        texts.append("\n".join(body[start:start + 6]))
    held_out = rng.sample(lines, 8)
    return lines, texts + held_out + HF_TOKENIZER_CASES


def recast_ids(model_dir, text, no_special):
    path = WORK / f"text-{abs(hash((str(model_dir), text, no_special)))}.txt"
    path.write_bytes(text.encode("utf-8"))
    cmd = [str(BUILD / "recast"), "tokenize", "--model", str(model_dir), "--file", str(path), "--json", "-q"]
    if no_special:
        cmd.append("--no-special")
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        return {"error": r.stderr.strip()[-300:]}
    return json.loads(r.stdout)["ids"]


def check_dir(d, cases, pool):
    """Every case through recast, both ways; the first few mismatches kept."""
    jobs = [(c, ns, pool.submit(recast_ids, d, c["text"], ns)) for c in cases for ns in (False, True)]
    bad = []
    for c, ns, fut in jobs:
        want = c["no_special"] if ns else c["ids"]
        got = fut.result()
        if got != want:
            bad.append({"text": c["text"][:80], "no_special": ns, "want": want[:40],
                        "got": got if isinstance(got, dict) else got[:40]})
    return {"dir": d.name, "cases": len(jobs), "mismatches": len(bad), "first": bad[:3]}


def main():
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    OUT.mkdir(parents=True, exist_ok=True)
    corpus, texts = corpus_and_texts()
    made = hf_tokenizer_fixtures(WORK, corpus=corpus, texts=texts, size=1.6)
    # tokenizer.model alone beside a Mistral config: transformers' defaults for the model type.
    mistral = WORK / "mistral_spm_model"
    mistral.mkdir()
    shutil.copy(WORK / "hf_llama2_spm_model" / "tokenizer.model", mistral / "tokenizer.model")
    (mistral / "config.json").write_text(json.dumps({"model_type": "mistral"}))
    auto = transformers.AutoTokenizer.from_pretrained(str(mistral))
    mcases = [{"text": t, "ids": auto(t).input_ids, "no_special": auto(t, add_special_tokens=False).input_ids}
              for t in texts]
    rows = []
    with ThreadPoolExecutor(16) as pool:
        for name in made:
            d = WORK / name
            cases = json.loads((d / "cases.json").read_text())["cases"]
            (d / "cases.json").unlink()  # recast sees the tokenizer files alone
            rows.append(check_dir(d, cases, pool) | {"files": sorted(p.name for p in d.iterdir())})
        rows.append(check_dir(mistral, mcases, pool) | {"class": type(auto).__name__})
        if GPT2_VOCAB is not None:
            fast = transformers.GPT2TokenizerFast(str(GPT2_VOCAB / "vocab.json"), str(GPT2_VOCAB / "merges.txt"))
            g = WORK / "gpt2_real"
            g.mkdir()
            for f in ("vocab.json", "merges.txt"):
                shutil.copy(GPT2_VOCAB / f, g / f)
            gcases = [{"text": t, "ids": fast(t).input_ids, "no_special": fast(t, add_special_tokens=False).input_ids}
                      for t in texts]
            rows.append(check_dir(g, gcases, pool))
    for r in rows:
        print(json.dumps(r, ensure_ascii=False), flush=True)
    result = {"transformers": transformers.__version__, "texts": len(texts), "tokenizers": rows}
    (OUT / "gpu-tokenizers.json").write_text(json.dumps(result, ensure_ascii=False, indent=1) + "\n")
    print("all ok" if all(r["mismatches"] == 0 for r in rows) else "NOT ALL OK")


if __name__ == "__main__":
    main()
