#!/usr/bin/python3
"""GGML's i-quant types end to end: tiny Mixtrals whose attention and expert matrices are random valid
i-quant blocks, run by mixtral.cpp, by llama.cpp (node-llama-cpp) and by the float64 NumPy reference.

mixtral.cpp cannot write these types yet, so the files are made here: `mixtral make-test-model` writes an
f32 model (shape a of test_fidelity.py, merged and per-expert layouts), and this script rewrites its
attention (q, k, v, output) and expert (gate, up, down) matrices as blocks of random bytes with random
fp16 scales, sized so each matrix (each expert) keeps its f32 RMS: every index, sign and scale code of an
i-quant block is valid, so random bytes are a fair sample of the format. Embeddings, norms, router and
output stay f32. A second file per type holds only its token embeddings as i-quant blocks (rows looked up,
nothing multiplied by quantized activations): there llama.cpp's own decoder meets ours almost exactly. Every token is routed to all experts (see the bounds below).

Checks, per type (iq1_s, iq1_m, iq2_xxs, iq2_xs, iq2_s, iq3_xxs, iq3_s, iq4_nl, iq4_xs):
  * engine vs llama.cpp on the merged file, every position (the K-quant bound of test_fidelity.py:
    llama.cpp quantizes the activations to Q8_K, or Q8_0 for iq4_nl; the engine's fallback does not);
  * engine vs the float64 reference (its own decoders, grids read from llama.cpp's source, not ours);
  * embeddings-only file: engine vs llama.cpp and vs the reference within f32 rounding (every other
    weight f32, so llama.cpp's decoder is compared with ours almost exactly);
  * the per-expert file (which this llama.cpp does not load) gives the merged file's logits;
  * `mixtral info` prints each type's bits per weight; a tensor whose data is one byte short, or whose
    rows are not whole blocks, is refused naming it.
"""
import argparse
import os
import shutil
import struct
import subprocess
import sys
import zlib

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import test_fidelity as fid  # noqa: E402  (shapes, runner, margins, bounds)
from test_fidelity import check, reference, rel_err  # noqa: E402

TYPES = ["iq1_s", "iq1_m", "iq2_xxs", "iq2_xs", "iq2_s", "iq3_xxs", "iq3_s", "iq4_nl", "iq4_xs"]
BPW = {"iq1_s": 1.5625, "iq1_m": 1.75, "iq2_xxs": 2.0625, "iq2_xs": 2.3125, "iq2_s": 2.5625, "iq3_xxs": 3.0625,
       "iq3_s": 3.4375, "iq4_nl": 4.5, "iq4_xs": 4.25}
MATRICES = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")
# Relative to max|logit|, at every position of the 48-token prompt. The files route every token to all
# experts (expert_used_count = expert_count): with random i-quant weights, llama.cpp's quantized
# activations flip near-tied top-2 choices at some positions, and a flip reaches every later position
# through the KV cache; dense routing has nothing to flip, so every position is compared.
# Engine vs reference: the engine dequantizes these weights to f32 rows (kernels/dispatch.cpp fallback),
# so only f32 rounding separates them: measured 2.3e-7 .. 4.1e-7 over the nine types and four seeds. The
# bound is test_fidelity's for quantized weights, which kernels that quantize the activations (as
# llama.cpp does) must also meet.
TOL_VS_REFERENCE = 2.5e-2
# Engine vs llama.cpp (activations quantized to Q8_K, Q8_0 for iq4_nl): measured over the nine types and
# four seeds, max 0.0088 .. 0.0207 (median over positions 0.006 .. 0.011); the K-quant bound.
TOL_VS_LLAMACPP = 3e-2
TOL_LAYOUTS = 1e-5  # merged vs per-expert file, engine, same blocks
# Only the embeddings in i-quant blocks, everything else f32: llama.cpp, the engine and the reference differ
# by f32 rounding only (test_fidelity's f32 bound); a wrong bit of any decoder moves an embedding row.
TOL_EMBD = 2e-5


def is_matrix(name):
    """Attention and expert matrices (blk.L.attn_q.weight, blk.L.ffn_up_exps.weight, blk.L.ffn_up.E.weight);
    not the router (ffn_gate_inp)."""
    parts = name.split(".")
    return len(parts) >= 4 and parts[0] == "blk" and parts[2].removesuffix("_exps") in MATRICES


def is_embedding(name):
    return name == "token_embd.weight"


def random_blocks(rng, t, n, rms):
    """Bytes of n elements of type t (GGML id): random indices, signs and codes; fp16 scales drawn so
    the values' RMS is about `rms`."""
    block, nbytes = reference._GGML_BLOCK[t]
    nb = n // block
    raw = rng.integers(0, 256, size=(nb, nbytes), dtype=np.uint8)

    def set_d(d):
        h = d.astype("<f2").view(np.uint16).astype(np.uint16)
        if t == reference.GGML_IQ1_M:  # the fp16 d lives in the top nibbles of the 4 scale words (bytes 48..55)
            w = raw[:, 48:56].copy().view("<u2")
            for k in range(4):
                w[:, k] = (w[:, k] & 0x0FFF) | (((h >> (4 * k)) & 0xF) << 12)
            raw[:, 48:56] = w.view(np.uint8)
        else:
            raw[:, 0:2] = h[:, None].view(np.uint8).reshape(nb, 2)

    jitter = rng.uniform(0.75, 1.25, size=nb)
    set_d(jitter)
    unit = reference._dequantize(t, raw.tobytes(), n)
    set_d(jitter * rms / np.sqrt(np.mean(unit ** 2)))
    return raw.tobytes()


def rewrite_gguf(src, dst, ggml_type, seed, which=is_matrix):
    """src (an f32 GGUF from make-test-model) with the tensors `which` picks (default: every attention and
    expert matrix) as random blocks, drawn per matrix and expert from a seed of its name, so the merged and
    the per-expert file hold the same blocks. The last one picked goes last in the file (infos and data)."""
    raw = open(src, "rb").read()
    meta, infos, data_start = reference.gguf_header(raw, src)
    r = reference._Reader(raw)
    r.pos = 24
    head = bytearray(raw[:24])
    for _ in range(len(meta)):
        start = r.pos
        key = r.string()
        vtype = r.scalar("<u4")
        r.value(vtype)
        head += raw[start:r.pos]
        if key.endswith(".expert_used_count"):  # every expert, dense: no top-k choice to flip
            assert vtype == 4, key
            struct.pack_into("<I", head, len(head) - 4, meta[key.replace("used_count", "count")])
    align = meta.get("general.alignment", 32)
    tensors = []  # (name, ne, type, data)
    for name, ne, t, o in infos:
        data = raw[data_start + o:data_start + o + reference.gguf_tensor_bytes(ne, t)]
        if which(name):
            assert t == reference.GGML_F32, name
            w = np.frombuffer(data, dtype="<f4").astype(np.float64)
            # blk.L.ffn_up_exps.weight [E, rows, cols] -> experts blk.L.ffn_up.0 ..; others: one matrix.
            parts = ([(name.replace("_exps.weight", f".{e}"), x) for e, x in enumerate(w.reshape(ne[2], -1))]
                     if name.endswith("_exps.weight") else [(name.replace(".weight", ""), w)])
            data = b"".join(random_blocks(np.random.default_rng([seed, zlib.crc32(key.encode())]), ggml_type,
                                          x.size, float(np.sqrt(np.mean(x ** 2)))) for key, x in parts)
            t = ggml_type
        tensors.append((name, ne, t, data))
    last = max(i for i, x in enumerate(tensors) if which(x[0]))
    tensors = tensors[:last] + tensors[last + 1:] + [tensors[last]]
    head, off, blobs = bytes(head), 0, []
    for name, ne, t, data in tensors:
        nm = name.encode()
        head += struct.pack("<Q", len(nm)) + nm + struct.pack("<I", len(ne))
        head += b"".join(struct.pack("<Q", d) for d in ne) + struct.pack("<IQ", t, off)
        blobs.append(data + b"\0" * ((-len(data)) % align))
        off += len(blobs[-1])
    head += b"\0" * ((-len(head)) % align)
    with open(dst, "wb") as f:
        f.write(head)
        for b in blobs:
            f.write(b)


def check_logits(r, label, path, prompt):
    """The engine's logits of `prompt` on the file at `path` against the float64 reference and llama.cpp
    (every position; the file routes densely or has clear margins). Returns (ours, reference)."""
    ref, _ = r.ref(path).forward(prompt)
    ours = r.score(path, prompt)
    err = rel_err(ours, ref, ref)
    check(err <= TOL_VS_REFERENCE, f"{label}: engine vs reference max error {err:.3g} "
                                   f"(bound {TOL_VS_REFERENCE:g}, max|logit| {np.abs(ref).max():.3f})")
    lc = r.llamacpp(path, prompt)
    check(lc.shape == ref.shape, f"{label}: llama.cpp logits shape {lc.shape}")
    if lc.shape == ref.shape:
        print(f"info {label}: llama.cpp vs reference max error {rel_err(lc, ref, ref):.3g}")
        err = rel_err(ours, lc, ref)
        check(err <= TOL_VS_LLAMACPP, f"{label}: engine vs llama.cpp max error {err:.3g} "
                                      f"(bound {TOL_VS_LLAMACPP:g}, every position)")
    return ours, ref


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mixtral", required=True)
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--node", default="node")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--types", default=",".join(TYPES))
    a = ap.parse_args()
    types = a.types.split(",")
    reference.register_iq(reference.ggml_common_h())
    shape = fid.SHAPES["a"]
    prompt = shape["prompt"]
    shutil.rmtree(a.workdir, ignore_errors=True)
    r = fid.Runner(argparse.Namespace(mixtral=a.mixtral, workdir=a.workdir, node=a.node, threads=a.threads))
    try:
        r.run([a.mixtral, "make-test-model", a.workdir] + shape["args"] +
              ["--types", "f32", "--layouts", "gguf-merged,gguf-legacy"])
        for tn in types:
            t = reference.IQ_TYPES[tn]
            paths = {}
            for layout in ("gguf-merged", "gguf-legacy"):
                paths[layout] = os.path.join(a.workdir, f"{layout}-{tn}.gguf")
                rewrite_gguf(fid.model_path(a.workdir, layout, "f32"), paths[layout], t, zlib.crc32(tn.encode()))
            merged = paths["gguf-merged"]
            ours, ref = check_logits(r, f"gguf-merged-{tn}", merged, prompt)
            lerr = rel_err(r.score(paths["gguf-legacy"], prompt), ours, ref)
            check(lerr <= TOL_LAYOUTS, f"gguf-legacy-{tn}: engine, per-expert vs merged file {lerr:.3g} "
                                       f"(bound {TOL_LAYOUTS:g})")
            embd = os.path.join(a.workdir, f"gguf-merged-embd-{tn}.gguf")
            rewrite_gguf(fid.model_path(a.workdir, "gguf-merged", "f32"), embd, t, zlib.crc32(tn.encode()),
                         is_embedding)
            eref, _ = r.ref(embd).forward(prompt)
            eours, elc = r.score(embd, prompt), r.llamacpp(embd, prompt)
            err = rel_err(eours, eref, eref)
            check(err <= TOL_EMBD, f"gguf-merged-embd-{tn}: engine vs reference max error {err:.3g} "
                                   f"(bound {TOL_EMBD:g})")
            if elc.shape == eref.shape:
                err = rel_err(eours, elc, eref)
                check(err <= TOL_EMBD, f"gguf-merged-embd-{tn}: engine vs llama.cpp max error {err:.3g} "
                                       f"(bound {TOL_EMBD:g})")
            else:
                check(False, f"gguf-merged-embd-{tn}: llama.cpp logits shape {elc.shape}")
            info = r.run([a.mixtral, "info", "--model", merged])
            want = f" {tn} {BPW[tn]:g},"
            check(want in info and f"  {tn}: {2 * 7} tensors, " in info,
                  f"gguf-merged-{tn}: info lists {2 * 7} {tn} tensors and '{want.strip()}' bits per weight")
            r.forget_models()
        check_bad_blocks(r, a, types[0])
    except (RuntimeError, subprocess.TimeoutExpired) as e:
        check(False, str(e))
    finally:
        shutil.rmtree(r.tmp, ignore_errors=True)
    return fid.summary()


def check_bad_blocks(r, a, tn):
    """A short last tensor and a row of partial blocks: `info` exits 1 naming the tensor."""
    good = os.path.join(a.workdir, f"gguf-merged-{tn}.gguf")
    raw = open(good, "rb").read()
    meta, infos, data_start = reference.gguf_header(raw, good)
    last = max(infos, key=lambda x: x[3])  # rewrite_gguf put an i-quant matrix last
    end = data_start + last[3] + reference.gguf_tensor_bytes(last[1], last[2])
    check(last[2] == reference.IQ_TYPES[tn], f"{tn}: the file's last tensor '{last[0]}' is {tn}")
    short = os.path.join(r.tmp, "short.gguf")
    open(short, "wb").write(raw[:end - 1])
    p = subprocess.run([a.mixtral, "info", "--model", short], capture_output=True, text=True)
    check(p.returncode == 1 and f"tensor '{last[0]}'" in p.stderr and "runs past the end" in p.stderr,
          f"{tn}: data one byte short: exit {p.returncode}, {p.stderr.strip()[-200:]!r}")
    # ne[0] of the first i-quant tensor's info halved (256 -> 128 columns: not whole 256-element blocks).
    name = next(n for n, _, t, _ in infos if t == reference.IQ_TYPES[tn])
    key = struct.pack("<Q", len(name)) + name.encode()
    pos = raw.index(key) + len(key) + 4
    ne0 = struct.unpack_from("<Q", raw, pos)[0]
    bad = bytearray(raw)
    struct.pack_into("<Q", bad, pos, ne0 // 2 if tn != "iq4_nl" else ne0 - 16)
    path = os.path.join(r.tmp, "partial.gguf")
    open(path, "wb").write(bad)
    p = subprocess.run([a.mixtral, "info", "--model", path], capture_output=True, text=True)
    check(p.returncode == 1 and f"tensor '{name}'" in p.stderr and f"{tn}'s block size" in p.stderr,
          f"{tn}: a row of partial blocks: exit {p.returncode}, {p.stderr.strip()[-200:]!r}")


if __name__ == "__main__":
    sys.exit(main())
