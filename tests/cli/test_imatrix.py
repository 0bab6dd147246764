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
4. `quantize --imatrix`: the file (ours, and a GGUF and a legacy .dat written here) is read and matched to the
   tensors by name and size (a missing, resized or foreign entry is an error naming it); a type without
   K-quants refuses it. Q4_K with our imatrix against Q4_K without, both dequantized by the reference's own
   decoders: the importance-weighted squared error sum_j qw_j (w - q(w))_j^2 from the F16 weights (qw the
   imatrix's per-column mean squares, per expert) is lower for every Q4_K tensor together.
5. Both expert layouts: a random model written merged (blk.L.ffn_*_exps) and per expert (blk.L.ffn_*.E) gives
   the same importance matrix, and the same Q4_K file quantized with it.

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


def write_gguf(path, kv, tensors):
    """A GGUF v3 file: kv [(key, type, value)] (u32, string, array of strings), tensors [(name, float32 array
    in row-major shape)], data aligned to 32."""
    def s(x):
        b = x.encode()
        return struct.pack("<Q", len(b)) + b
    out = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(kv))
    for key, t, v in kv:
        out += s(key) + struct.pack("<I", t)
        if t == GGUF_U32:
            out += struct.pack("<I", v)
        elif t == GGUF_STRING:
            out += s(v)
        else:
            out += struct.pack("<IQ", GGUF_STRING, len(v)) + b"".join(s(x) for x in v)
    off, blobs = 0, []
    for name, a in tensors:
        ne = list(reversed(a.shape))
        out += s(name) + struct.pack("<I", len(ne)) + b"".join(struct.pack("<Q", n) for n in ne)
        out += struct.pack("<IQ", GGML_F32, off)
        blob = a.astype("<f4").tobytes()
        blob += b"\0" * (-len(blob) % 32)
        blobs.append(blob)
        off += len(blob)
    out += b"\0" * (-len(out) % 32)
    with open(path, "wb") as f:
        f.write(out + b"".join(blobs))


def write_dat(path, entries, chunks, dataset):
    """llama.cpp's legacy .dat: entries {name: (ncall, float32 values)}."""
    out = struct.pack("<i", len(entries))
    for name, (ncall, v) in sorted(entries.items()):
        out += struct.pack("<i", len(name)) + name.encode() + struct.pack("<ii", ncall, len(v))
        out += np.asarray(v, dtype="<f4").tobytes()
    out += struct.pack("<ii", chunks, len(dataset)) + dataset.encode()
    with open(path, "wb") as f:
        f.write(out)


def check_quantize_imatrix(a, w, ref):
    """quantize --imatrix: read, matched by name and size; the weighted error of the K-quant tensors."""
    meta = [("general.type", GGUF_STRING, "imatrix"), ("imatrix.datasets", GGUF_ARRAY, ["t.txt"]),
            ("imatrix.chunk_count", GGUF_U32, 2), ("imatrix.chunk_size", GGUF_U32, CTX)]

    def tensors(entries):
        out = []
        for name, (sums, counts) in sorted(entries.items()):
            out += [(name + ".in_sum2", sums), (name + ".counts", counts.astype(np.float64).reshape(-1, 1))]
        return out

    def quantize(imatrix, typ, code, needle=None, out=None):
        out = out or w("q.gguf")
        r = run([a.mixtral, "quantize", a.model, out, typ, "--imatrix", imatrix, "--threads", "2"], expect=code)
        if code == 0:
            assert os.path.exists(out)
            return
        lines = [ln for ln in r.stderr.strip().splitlines() if "error" in ln]
        assert len(lines) == 1 and needle in lines[0], (imatrix, typ, r.stderr)
        assert not os.path.exists(out), "quantize wrote a file it refused to make"

    quantize(w("imatrix.gguf"), "Q4_K_M", 0, out=w("q4km.gguf"))
    quantize(w("imatrix.gguf"), "q3_k", 0, out=w("q3k.gguf"))
    quantize(w("imatrix.gguf"), "Q8_0", 2, "--imatrix has no use for type Q8_0")
    quantize(w("imatrix.gguf"), "Q4_0", 2, "--imatrix has no use for type Q4_0")
    write_gguf(w("ok.gguf"), meta, tensors(ref))
    quantize(w("ok.gguf"), "Q4_K", 0, out=w("ok-q4k.gguf"))
    # A llama.cpp-made matrix also holds the router (blk.L.ffn_gate_inp.weight): matched, not needed.
    router = dict(ref)
    router["blk.0.ffn_gate_inp.weight"] = (np.ones((1, 256)), np.array([96]))
    write_gguf(w("router.gguf"), meta, tensors(router))
    quantize(w("router.gguf"), "Q4_K", 0, out=w("router-q4k.gguf"))
    # The legacy .dat: (sum / count) * ncall, one flat row per weight.
    write_dat(w("legacy.dat"), {n: (2, (s / np.maximum(c, 1)[:, None] * 2).ravel()) for n, (s, c) in ref.items()},
              2, "t.txt")
    quantize(w("legacy.dat"), "Q5_K_M", 0, out=w("legacy-q5km.gguf"))

    missing = {n: v for n, v in ref.items() if n != "blk.2.attn_v.weight"}
    write_gguf(w("missing.gguf"), meta, tensors(missing))
    quantize(w("missing.gguf"), "Q4_K", 1, "no entry for 'blk.2.attn_v.weight'")
    resized = dict(ref)
    resized["blk.1.ffn_down_exps.weight"] = (np.ones((8, 100)), np.ones(8, dtype=np.int64))
    write_gguf(w("resized.gguf"), meta, tensors(resized))
    quantize(w("resized.gguf"), "Q4_K", 1, "'blk.1.ffn_down_exps.weight' has 800 values")
    foreign = dict(ref)
    foreign["blk.7.attn_q.weight"] = (np.ones((1, 256)), np.array([1]))
    write_gguf(w("foreign.gguf"), meta, tensors(foreign))
    quantize(w("foreign.gguf"), "Q4_K", 1, "'blk.7.attn_q.weight' names no tensor")
    write_gguf(w("nometa.gguf"), meta[:1], tensors(ref))
    quantize(w("nometa.gguf"), "Q4_K", 1, "imatrix.datasets")
    with open(w("junk.dat"), "wb") as f:
        f.write(b"\x01\0\0\0junk")
    quantize(w("junk.dat"), "Q4_K", 1, w("junk.dat"))
    quantize(w("none.gguf"), "Q4_K", 1, w("none.gguf"))

    # The weighted error of Q4_K with and without the importance matrix, against the F16 weights.
    run([a.mixtral, "quantize", a.model, w("plain-q4k.gguf"), "Q4_K", "--threads", "2"])
    src, imx, plain = (reference.gguf_read(p) for p in (a.model, w("imatrix.gguf"), w("plain-q4k.gguf")))
    _, weighted, types = reference.gguf_read(w("ok-q4k.gguf"))
    totals = np.zeros(2)  # [with, without]
    n = 0
    for name, t in types.items():
        if t != reference.GGML_Q4_K or name + ".in_sum2" not in imx[1]:
            continue
        sums, counts = imx[1][name + ".in_sum2"], imx[1][name + ".counts"].ravel()  # [n_mat, cols], [n_mat]
        qw = np.where(counts[:, None] > 0, sums / np.maximum(counts, 1)[:, None], 1.0)
        orig = src[1][name]
        qw = qw.reshape((-1, 1, orig.shape[-1])) if orig.ndim == 3 else qw.reshape(1, -1)
        for k, q in enumerate((weighted[name], plain[1][name])):
            totals[k] += float(np.sum(qw * (orig - q) ** 2))
        n += 1
    assert n >= 16, n  # attention (4 per layer) and ffn_gate/up of the experts
    ratio = totals[0] / totals[1]
    assert ratio < 0.95, ratio
    print(f"quantize --imatrix: read and matched (GGUF, .dat); Q4_K's importance-weighted error {ratio:.3f} of "
          f"the plain Q4_K's over {n} tensors; bad matrices named")


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

    check_quantize_imatrix(a, w, ref)

    # 5. Both expert layouts of one random model.
    run([a.mixtral, "make-test-model", w("tm"), "--layouts", "gguf-merged,gguf-legacy", "--types", "f32",
         "--layers", "2", "--dim", "256", "--ffn", "256", "--heads", "8", "--kv-heads", "2", "--vocab", "320"])
    files = []
    for layout in ("gguf-merged", "gguf-legacy"):
        m = w(f"tm/{layout}-f32.gguf")
        files.append(w(f"{layout}.imatrix.gguf"))
        run([a.mixtral, "imatrix", "--model", m, "--text-file", w("text.txt"), "--ctx", "16", "-o", files[-1],
             "--threads", "2"])
        run([a.mixtral, "quantize", m, w(f"{layout}-q4k.gguf"), "Q4_K", "--imatrix", files[-1]])
    for pair in (files, [w("gguf-merged-q4k.gguf"), w("gguf-legacy-q4k.gguf")]):
        with open(pair[0], "rb") as f0, open(pair[1], "rb") as f1:
            assert f0.read() == f1.read(), f"the two expert layouts differ: {pair}"
    print("imatrix: merged and per-expert layouts give the same importance matrix and the same Q4_K with it")


if __name__ == "__main__":
    main()
