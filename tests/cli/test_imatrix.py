#!/usr/bin/python3
"""`mixtral imatrix` on the built-in model (models/tiny-kjv.gguf) against the float64 NumPy reference
(tests/reference/reference.py: its own GGUF reader and forward pass):

1. The file, read by a reader written here from the GGUF facts (not the engine's, not reference.py's): the
   metadata llama-imatrix writes (general.type "imatrix", imatrix.datasets, imatrix.chunk_count and
   imatrix.chunk_size as u32), per weight NAME an F32 NAME.in_sum2 of ne [cols, n_mat] and an F32
   NAME.counts of ne [1, n_mat], entries in sorted name order, every attention and expert weight present.
2. The statistic: for each weight, per input column, the sum of the squared matmul inputs and the token count
   (an expert: its routed tokens only), over the same chunks (the text cut into --ctx tokens, the partial
   last chunk dropped, each chunk alone from position 0 with BOS first), equal to reference.imatrix within
   float32 rounding (1e-4 relative). The text has a router top-2 margin >= 2e-3 (in logits) at every token and layer
   (asserted), so both pick the same experts.
3. Bad arguments: usage errors exit 2, data errors exit 1, one line naming the flag or file.

  test_imatrix.py --mixtral BIN --model models/tiny-kjv.gguf --workdir DIR
"""
import argparse
import json
import os
import shutil
import struct
import subprocess
import sys

import numpy as np
import sentencepiece as spm

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tests", "reference"))
import reference  # noqa: E402

# 1 John 2:8-12 (KJV, public domain): 115 tokens, two chunks of 48 (19 dropped).
TEXT = ("true light now shineth. He that saith he is in the light, and hateth his brother, is in darkness even "
        "until now. He that loveth his brother abideth in the light, and there is none occasion of stumbling in "
        "him. But he that hateth his brother is in darkness, and walketh in darkness, and knoweth not whither he "
        "goeth, because that darkness hath blinded his eyes. I write unto you, little children, because your "
        "sins are forgiven you for his name's sake. I write unto you, fathers,")
CTX = 48
MIN_MARGIN = 2e-3
GGUF_U32, GGUF_STRING, GGUF_ARRAY, GGML_F32 = 4, 8, 9, 0


def run(cmd, expect=0):
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != expect:
        sys.exit(f"FAIL: {' '.join(cmd)} -> exit {r.returncode} (expected {expect}): {r.stderr.strip()[:500]}")
    return r


def read_gguf(path):
    """(metadata {key: (type, value)}, [(name, ne, ggml type, offset)], data start, bytes)."""
    with open(path, "rb") as f:
        raw = f.read()
    pos = 0

    def take(fmt):
        nonlocal pos
        v = struct.unpack_from("<" + fmt, raw, pos)
        pos += struct.calcsize("<" + fmt)
        return v[0]

    def string():
        nonlocal pos
        n = take("Q")
        s = raw[pos:pos + n].decode("utf-8")
        pos += n
        return s

    scalar = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}

    def value(t):
        if t == GGUF_STRING:
            return string()
        if t == GGUF_ARRAY:
            et, n = take("I"), take("Q")
            return (et, [value(et) for _ in range(n)])
        return take(scalar[t])

    assert raw[:4] == b"GGUF", "not a GGUF"
    pos = 4
    version, n_tensors, n_kv = take("I"), take("Q"), take("Q")
    assert version == 3, version
    meta = {}
    for _ in range(n_kv):
        key = string()
        t = take("I")
        meta[key] = (t, value(t))
    infos = []
    for _ in range(n_tensors):
        name = string()
        nd = take("I")
        ne = [take("Q") for _ in range(nd)]
        infos.append((name, ne, take("I"), take("Q")))
    align = meta.get("general.alignment", (GGUF_U32, 32))[1]
    return meta, infos, (pos + align - 1) // align * align, raw


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mixtral", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--workdir", required=True)
    a = ap.parse_args()
    shutil.rmtree(a.workdir, ignore_errors=True)
    os.makedirs(a.workdir)
    w = lambda name: os.path.join(a.workdir, name)  # noqa: E731
    with open(w("text.txt"), "w", encoding="utf-8") as f:
        f.write(TEXT)

    run([a.mixtral, "imatrix", "--model", a.model, "--text-file", w("text.txt"), "--ctx", str(CTX), "-o",
         w("imatrix.gguf"), "--threads", "2"])

    # 1. The file.
    meta, infos, data_start, raw = read_gguf(w("imatrix.gguf"))
    assert meta["general.type"] == (GGUF_STRING, "imatrix"), meta["general.type"]
    assert meta["imatrix.datasets"] == (GGUF_ARRAY, (GGUF_STRING, [w("text.txt")])), meta["imatrix.datasets"]
    ids = json.loads(run([a.mixtral, "tokenize", "--model", a.model, "--text", TEXT]).stdout)
    sp = spm.SentencePieceProcessor(model_file=os.path.join(os.path.dirname(os.path.abspath(a.model)),
                                                            "tokenizer.model"))
    assert ids == [1] + sp.encode(TEXT), "the engine's tokens differ from SentencePiece's"
    n_chunks = len(ids) // CTX
    assert n_chunks == 2 and len(ids) % CTX > 0, len(ids)
    assert meta["imatrix.chunk_count"] == (GGUF_U32, n_chunks), meta["imatrix.chunk_count"]
    assert meta["imatrix.chunk_size"] == (GGUF_U32, CTX), meta["imatrix.chunk_size"]
    names = [i[0] for i in infos]
    ours = {}
    for name, ne, t, off in infos:
        assert t == GGML_F32, (name, t)
        n = int(np.prod(ne))
        ours[name] = (ne, np.frombuffer(raw, dtype="<f4", count=n, offset=data_start + off))
    model = reference.Model(a.model)
    c = model.cfg
    stems = sorted({n.rsplit(".", 1)[0] for n in names})
    assert names == [s + suf for s in stems for suf in (".in_sum2", ".counts")], names  # llama.cpp's order
    want_stems = sorted(f"blk.{l}.{g}.weight" for l in range(c["n_layers"])
                        for g in ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate_exps", "ffn_up_exps",
                                  "ffn_down_exps"))
    assert stems == want_stems, stems

    # 2. The statistic on the same chunks.
    chunks = [[1] + ids[i * CTX + 1:(i + 1) * CTX] for i in range(n_chunks)]
    assert ids[0] == 1
    ref, routing = reference.imatrix(model, chunks)
    margin = reference.min_margin(routing)
    assert margin >= MIN_MARGIN, f"the text has a router margin of {margin} < {MIN_MARGIN}"
    worst_abs = worst_rel = 0.0
    for stem in stems:
        sums, counts = ref[stem]
        ne_s, s = ours[stem + ".in_sum2"]
        ne_c, k = ours[stem + ".counts"]
        assert ne_s == [sums.shape[1], sums.shape[0]], (stem, ne_s, sums.shape)
        assert ne_c == [1, sums.shape[0]], (stem, ne_c)
        assert np.array_equal(k, counts.astype(np.float32)), (stem, k, counts)
        s = s.reshape(sums.shape).astype(np.float64)
        err = np.abs(s - sums)
        # Relative to the column's value, floored at 1e-3 of the matrix's mean (columns near 0 carry no weight).
        rel = err / np.maximum(sums, 1e-3 * sums.mean(axis=1, keepdims=True) + 1e-30)
        worst_abs, worst_rel = max(worst_abs, float(err.max())), max(worst_rel, float(rel.max()))
        assert rel.max() < 1e-4, (stem, float(rel.max()))
    experts_used = sum(int((ref[s][1] > 0).sum()) for s in stems if "_exps" in s)
    print(f"imatrix: {len(stems)} entries over {n_chunks} chunks of {CTX} tokens (min router margin "
          f"{margin:.4f}, {experts_used} expert matrices with tokens): counts equal, sums within "
          f"{worst_rel:.2e} relative ({worst_abs:.2e} absolute) of the float64 reference")

    # 3. Bad arguments.
    base = [a.mixtral, "imatrix", "--model", a.model, "--text-file", w("text.txt")]
    for args, code, needle in [
        (["--ctx", "-3", "-o", w("x.gguf")], 2, "--ctx"),
        (["--ctx", "100000", "-o", w("x.gguf")], 2, "--ctx"),
        (["--ctx", "512", "-o", w("x.gguf")], 1, w("text.txt")),  # fewer tokens than one chunk
        (["-o", w("no-such-dir/x.gguf")], 2, "no-such-dir"),
        ([], 2, "-o"),
    ]:
        r = run(base + args, expect=code)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and needle in lines[0], (args, r.stderr)
    r = run([a.mixtral, "imatrix", "--model", a.model, "--text-file", w("missing.txt"), "-o", w("x.gguf")], 1)
    assert w("missing.txt") in r.stderr, r.stderr
    assert not os.path.exists(w("x.gguf"))
    print("imatrix: bad arguments rejected")


if __name__ == "__main__":
    main()
