#!/usr/bin/python3
"""Trains the built-in tiny Mixtral on the KJV (see models/README.md) and exports a Hugging Face directory.

Deterministic: fixed seeds, torch.use_deterministic_algorithms(True), a fixed thread count, batches drawn from
a seeded generator. Run from the repository root (Debian's python3-torch, numpy, sentencepiece):

  /usr/bin/python3 tools/train_tiny/train.py --data /tmp/kjv --out /tmp/tiny-hf [--steps N] [--measure 5]

--data: the output of corpus.py plus tok.model (spm_train; see make_model.sh). --measure K: time K steps and
exit (to size the run).
"""
import argparse
import json
import math
import os
import shutil
import struct
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from model import Config, Mixtral, perplexity  # noqa: E402


def write_safetensors(path, tensors):
    """{name: float32 tensor} -> a .safetensors file (F32)."""
    header, blobs, off = {}, [], 0
    for name in sorted(tensors):
        a = tensors[name].detach().to(torch.float32).contiguous().numpy()
        b = a.astype("<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(a.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    header["__metadata__"] = {"format": "pt"}
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


TTY = sys.stderr.isatty()  # progress bars on a terminal only; logs and pipes stay quiet


def bar(done, total, detail=""):
    """One-line progress bar on stderr (callers check TTY)."""
    fill = 30 * done // total
    sys.stderr.write(f"\rtrain [{'#' * fill}{'.' * (30 - fill)}] {100 * done / total:5.1f}% {done}/{total}  "
                     f"{detail}\033[K" + ("\n" if done == total else ""))
    sys.stderr.flush()


def export_hf(model, tok_model, out):
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(model.c.hf_config(), f, indent=2)
    write_safetensors(os.path.join(out, "model.safetensors"), model.state_dict())
    shutil.copyfile(tok_model, os.path.join(out, "tokenizer.model"))
    with open(os.path.join(out, "tokenizer_config.json"), "w") as f:
        json.dump({"tokenizer_class": "LlamaTokenizer", "add_bos_token": True, "add_eos_token": False,
                   "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "legacy": True,
                   "model_max_length": model.c.max_position_embeddings}, f, indent=2)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--steps", type=int, default=360)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--warmup", type=int, default=30)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--ffn", type=int, default=384)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--measure", type=int, default=0)
    a = ap.parse_args()

    torch.manual_seed(a.seed)
    np.random.seed(a.seed)
    torch.set_num_threads(a.threads)
    torch.use_deterministic_algorithms(True)

    import sentencepiece as spm
    tok_model = os.path.join(a.data, "tok.model")
    sp = spm.SentencePieceProcessor(model_file=tok_model)
    # One document each, as `mixtral perplexity` reads a file: BOS, then the whole text.
    def encode_file(name):
        with open(os.path.join(a.data, name), encoding="utf-8") as f:
            return [sp.bos_id()] + sp.encode(f.read())
    train_ids = np.array(encode_file("train.txt"), dtype=np.int64)
    held_ids = encode_file("heldout.txt")
    V = sp.get_piece_size()
    print(f"tokens: train {len(train_ids)}, heldout {len(held_ids)}, vocab {V}", flush=True)

    c = Config(vocab_size=V, hidden_size=a.dim, intermediate_size=a.ffn, num_hidden_layers=a.layers,
               num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=1024)
    model = Mixtral(c)
    for name, p in model.named_parameters():  # small init, as HF's initializer_range 0.02
        if p.dim() == 2:
            torch.nn.init.normal_(p, std=0.02)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"parameters: {n_params}", flush=True)
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, betas=(0.9, 0.95), weight_decay=0.1)
    gen = np.random.default_rng(a.seed)

    def lr_at(step):
        if step < a.warmup:
            return a.lr * (step + 1) / a.warmup
        t = (step - a.warmup) / max(1, a.steps - a.warmup)
        return a.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))

    steps = a.measure if a.measure else a.steps
    t0 = time.time()
    model.train()
    for step in range(steps):
        starts = gen.integers(0, len(train_ids) - a.seq - 1, size=a.batch)
        batch = torch.from_numpy(np.stack([train_ids[s:s + a.seq + 1] for s in starts]))
        x, y = batch[:, :-1], batch[:, 1:]
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        logits, aux = model(x, with_aux=True)
        ce = torch.nn.functional.cross_entropy(logits.reshape(-1, V), y.reshape(-1))
        loss = ce + c.router_aux_loss_coef * aux
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if TTY and (step % 5 == 0 or step == steps - 1):
            el = time.time() - t0
            bar(step + 1, steps, f"loss {ce.item():.4f} aux {aux.item():.4f} lr {lr_at(step):.2e} "
                                 f"{el:.0f}s ({el / (step + 1):.2f} s/step)")
    train_s = time.time() - t0
    if a.measure:
        return
    model.eval()
    nll, n = perplexity(model, held_ids, 256, 128)
    print(f"heldout (ctx 256, stride 128): {n} tokens, mean NLL {nll / n:.5f}, ppl {math.exp(nll / n):.3f}")
    export_hf(model, tok_model, a.out)
    with open(os.path.join(a.out, "training.json"), "w") as f:
        json.dump({"args": vars(a), "parameters": n_params, "train_tokens": int(len(train_ids)),
                   "heldout_tokens": len(held_ids), "train_seconds": round(train_s, 1),
                   "final_train_loss": round(ce.item(), 5),
                   "heldout_ctx256_stride128": {"tokens": n, "mean_nll": nll / n, "ppl": math.exp(nll / n)},
                   "torch": torch.__version__}, f, indent=2)
    print(f"exported {a.out} ({train_s:.0f} s of training, final train loss {ce.item():.4f})")


if __name__ == "__main__":
    main()
