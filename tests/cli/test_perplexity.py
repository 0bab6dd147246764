#!/usr/bin/python3
"""`mixtral perplexity` on the trained built-in model equals the training framework's perplexity (PyTorch,
tools/train_tiny/model.py, the same sliding windows) within 0.5%, from the GGUF and from a Hugging Face
directory; and it is far below a unigram baseline.

The HF safetensors are not shipped, so the test rebuilds both the PyTorch model and an HF directory from the
shipped GGUF through the independent NumPy reference reader (tests/reference/reference.py: its own GGUF parser
and dequantisers; q/k rows un-permuted to HF's rotate-half layout). The held-out text is re-extracted from
Debian's bible-kjv-text by tools/train_tiny/corpus.py (the same split as training).

  test_perplexity.py --mixtral BIN --model models/tiny-kjv.gguf --workdir DIR [--chapters 4 --ctx 256 --stride 128]
"""
import argparse
import collections
import json
import math
import os
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tests", "reference"))
sys.path.insert(0, os.path.join(ROOT, "tools", "train_tiny"))

import numpy as np  # noqa: E402
import sentencepiece as spm  # noqa: E402
import torch  # noqa: E402

import reference  # noqa: E402
from model import Config, Mixtral, perplexity  # noqa: E402
from train import write_safetensors  # noqa: E402


def run(cmd):
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"FAIL: {' '.join(cmd)} -> exit {r.returncode}: {r.stderr.strip()}")
    return r.stdout


def torch_model(cfg, w):
    c = Config(vocab_size=cfg["vocab"], hidden_size=cfg["dim"], intermediate_size=cfg["ffn"],
               num_hidden_layers=cfg["n_layers"], num_attention_heads=cfg["n_heads"],
               num_key_value_heads=cfg["n_kv_heads"], head_dim=cfg["head_dim"],
               num_local_experts=cfg["n_experts"], num_experts_per_tok=cfg["top_k"], rms_norm_eps=cfg["eps"],
               rope_theta=cfg["theta"])
    m = Mixtral(c)
    sd = {k: torch.from_numpy(v.astype(np.float32)) for k, v in w.items()}
    missing, unexpected = m.load_state_dict(sd, strict=True), None
    del missing, unexpected
    return m.eval()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mixtral", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--chapters", type=int, default=4)
    ap.add_argument("--ctx", type=int, default=256)
    ap.add_argument("--stride", type=int, default=128)
    a = ap.parse_args()
    t0 = time.time()
    torch.manual_seed(0)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    shutil.rmtree(a.workdir, ignore_errors=True)
    os.makedirs(a.workdir)
    corpus = os.path.join(a.workdir, "corpus")
    run([sys.executable, os.path.join(ROOT, "tools", "train_tiny", "corpus.py"), corpus])
    with open(os.path.join(corpus, "heldout.txt"), encoding="utf-8") as f:
        text = "".join(f.readlines()[:a.chapters])
    eval_txt = os.path.join(a.workdir, "eval.txt")
    with open(eval_txt, "w", encoding="utf-8") as f:
        f.write(text)

    # Tokens: SentencePiece (the shipped tokenizer.model) must agree with the engine's tokenizer of the GGUF.
    tok_model = os.path.join(os.path.dirname(os.path.abspath(a.model)), "tokenizer.model")
    sp = spm.SentencePieceProcessor(model_file=tok_model)
    ids = [sp.bos_id()] + sp.encode(text)
    eng_ids = json.loads(run([a.mixtral, "tokenize", "--model", a.model, "--text-file", eval_txt]))
    assert eng_ids == ids, "the GGUF's tokenizer and SentencePiece disagree on the held-out text"

    # The training framework: PyTorch, float32, weights read from the GGUF by the NumPy reference.
    cfg, w = reference.load_model(a.model)
    model = torch_model(cfg, w)
    nll, count = perplexity(model, ids, a.ctx, a.stride)
    ppl_torch = math.exp(nll / count)

    # An HF directory of the same weights (float32 safetensors, config.json, tokenizer.model).
    hf = os.path.join(a.workdir, "hf")
    os.makedirs(hf)
    with open(os.path.join(hf, "config.json"), "w") as f:
        json.dump(model.c.hf_config(), f)
    write_safetensors(os.path.join(hf, "model.safetensors"), model.state_dict())
    shutil.copyfile(tok_model, os.path.join(hf, "tokenizer.model"))

    res = {}
    for name, path in (("gguf", a.model), ("hf", hf)):
        out = run([a.mixtral, "perplexity", "--model", path, "--text-file", eval_txt, "--ctx", str(a.ctx),
                   "--stride", str(a.stride), "--json", "--threads", "2"])
        res[name] = json.loads(out.strip().splitlines()[-1])
        assert res[name]["tokens_scored"] == count, (name, res[name]["tokens_scored"], count)

    # Bad input: one line naming the option; exit 2 for usage, 1 for data.
    for args, code, needle in (
            (["--text-file", eval_txt, "--ctx", "64", "--stride", "65"], 2, "--stride"),
            (["--text-file", eval_txt, "--ctx", "1"], 2, "--ctx"),
            (["--text-file", eval_txt, "--ctx", "100000"], 2, "--ctx"),
            (["--text-file", os.path.join(a.workdir, "missing.txt")], 1, "missing.txt")):
        r = subprocess.run([a.mixtral, "perplexity", "--model", a.model] + args, capture_output=True, text=True)
        assert r.returncode == code and needle in r.stderr and r.stderr.count("\n") == 1, (args, r.returncode,
                                                                                           r.stderr)

    # Unigram baseline: token frequencies of the training split (add-one smoothing), on the same targets.
    with open(os.path.join(corpus, "train.txt"), encoding="utf-8") as f:
        freq = collections.Counter([sp.bos_id()] + sp.encode(f.read()))
    total = sum(freq.values()) + sp.get_piece_size()
    uni_nll = -sum(math.log((freq[t] + 1) / total) for t in ids[1:])
    ppl_uni = math.exp(uni_nll / (len(ids) - 1))

    print(f"held-out text: {a.chapters} chapters, {len(ids)} tokens, {count} scored "
          f"(ctx {a.ctx}, stride {a.stride})")
    print(f"perplexity  torch {ppl_torch:.4f}  engine GGUF {res['gguf']['perplexity']:.4f}  "
          f"engine HF {res['hf']['perplexity']:.4f}  unigram {ppl_uni:.2f}")
    ok = True
    for name in ("gguf", "hf"):
        rel = abs(res[name]["perplexity"] / ppl_torch - 1)
        print(f"  {name}: relative difference to torch {rel:.2e} (limit 5e-3)")
        ok &= rel < 5e-3
    if not res["gguf"]["perplexity"] < 0.5 * ppl_uni:
        print("FAIL: the trained model is not far below the unigram baseline")
        ok = False
    print(f"{time.time() - t0:.1f} s")
    if not ok:
        print("FAIL")
        return 1
    print("PASS")
    return 0


if __name__ == "__main__":
    sys.exit(main())
