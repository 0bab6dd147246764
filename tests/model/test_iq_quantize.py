#!/usr/bin/python3
"""`mixtral quantize` to llama.cpp's i-quant mixes (IQ1_S, IQ1_M, IQ2_XXS, IQ2_XS, IQ2_S, IQ2_M, IQ3_XXS,
IQ3_XS, IQ3_S, IQ3_M) end to end: files our quantizers write load in llama.cpp (node-llama-cpp) and give our
logits, the float64 NumPy reference (its own decoders, grids read from llama.cpp's source) gives them too,
and they stay near the f32 model's.

The model: 8 experts (llama.cpp's n_expert == 8 rules), 8 query heads over 2 KV heads (n_gqa() = 4),
2 layers, dim 256 and ffn 256 (every row whole 256-blocks), written f32 by make-test-model; an importance
matrix from `mixtral imatrix` on a short text; each mix quantized with --imatrix. Every token is routed to
all experts (expert_used_count patched to expert_count, test_iq4_quantize.route_densely): with 1- to 3-bit
weights and llama.cpp's quantized activations a near-tied top-2 choice could flip, and a flip would reach
every later position through the KV cache; dense routing has nothing to flip, so every position of the
48-token prompt is compared.

Checks, per mix:
  * every tensor's type is llama.cpp's llama_tensor_get_type_impl choice for this shape (want_type: its
    rules written out again here for 8 experts and n_gqa() = 4), router and norms f32;
  * engine vs llama.cpp and vs the reference, every position, within test_iquants.check_logits' bounds
    (the K-quant bound of test_fidelity);
  * engine on the mix vs engine on the f32 model (densely routed too): relative RMS within a bound per mix
    (measured);
  * without --imatrix: the mixes with tensors of llama.cpp's tensor_requires_imatrix types exit 2 with one
    line, "TYPE needs an importance matrix: --imatrix FILE"; IQ3_M (no such tensors) is written, with the
    same types and other bytes (the importance matrix is used).
And (with IQ2_XS) the row fallback: a 1-layer model with ffn 288 (ffn_down rows are not whole 256-blocks)
quantized to IQ2_XS writes ffn_down in iq4_nl (llama.cpp's tensor_type_fallback), which llama.cpp loads and
agrees on.
"""
import argparse
import os
import shutil
import subprocess
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import test_fidelity as fid  # noqa: E402  (runner, check, summary)
from test_fidelity import check, reference  # noqa: E402
from test_iq4_quantize import TEXT, route_densely  # noqa: E402
from test_iquants import check_logits  # noqa: E402  (engine vs reference and llama.cpp, the same bounds)

# The mixes this test quantizes, in two groups (--group; each run stays under a minute): every i-quant mix
# `mixtral quantize` knows. A mix whose quantizer has not landed is left out of these lists, not skipped
# at run time.
GROUPS = {"low": ["IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ2_M", "IQ1_S", "IQ1_M"],
          "3bit": ["IQ3_XXS", "IQ3_XS", "IQ3_S", "IQ3_M"]}
# llama_ftype_get_default_type.
BASE = dict(IQ2_XXS="iq2_xxs", IQ2_XS="iq2_xs", IQ2_S="iq2_xs", IQ2_M="iq2_s", IQ1_S="iq1_s", IQ1_M="iq1_m",
            IQ3_XXS="iq3_xxs", IQ3_XS="iq3_s", IQ3_S="iq3_s", IQ3_M="iq3_s")
LOW_BIT = ("IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ2_M", "IQ1_S", "IQ1_M")
# tensor_requires_imatrix's types (token_embd and output aside).
NEEDS_IMATRIX = ("iq1_s", "iq1_m", "iq2_xxs", "iq2_xs", "iq2_s", "iq3_xxs")

# Engine on the mix vs engine on the f32 model (both densely routed), every position: the RMS of the
# difference over the RMS of the f32 logits. Measured (AVX2, the quantizers as of 06:35 UTC 2026-12-07, each
# group stored at its unshrunk scale): iq2_xxs 0.512, iq2_xs 0.490, iq2_s 0.403, iq2_m 0.332, iq1_s 0.553,
# iq1_m 0.540, iq3_xxs 0.296, iq3_xs 0.263, iq3_s 0.240, iq3_m 0.236 (the least-squares scale before gave
# 0.483 0.468 0.375 0.322 0.498 0.494 0.295 0.263 0.240 0.235: on random weights, which no input lines up
# with, only the RMS error counts, and it is the larger; on the trained built-in model the KL divergence
# is the smaller, tools/iq_quality.py); for scale, the K-quant mixes on the same model and importance
# matrix: Q2_K 0.411, Q3_K_S 0.227, Q4_K_M 0.111, Q8_0 0.013 (random uniform weights through 8 dense
# experts are this sensitive). Bounds: 1.2x.
TOL_VS_F32 = dict(IQ2_XXS=0.61, IQ2_XS=0.59, IQ2_S=0.48, IQ2_M=0.40, IQ1_S=0.66, IQ1_M=0.65, IQ3_XXS=0.36,
                  IQ3_XS=0.32, IQ3_S=0.29, IQ3_M=0.285)

ARGS = ["--dim", "256", "--ffn", "256", "--layers", "2", "--heads", "8", "--kv-heads", "2", "--head-dim", "32",
        "--experts", "8", "--top-k", "2", "--vocab", "320", "--seed", "18"]
PROMPT = fid.SHAPES["a"]["prompt"]  # 48 tokens < 320

GGML_NAMES = {0: "f32", 1: "f16", 2: "q4_0", 8: "q8_0", 10: "q2_k", 11: "q3_k", 12: "q4_k", 13: "q5_k",
              14: "q6_k", **{v: k for k, v in reference.IQ_TYPES.items()}}
BLOCK = {"iq4_nl": 32, "q4_0": 32, "q8_0": 32, "f16": 1, "f32": 1}


def more_bits(i, n):
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def want_type(name, mix, n_layers, cols):
    """llama.cpp's type for tensor `name` (rows of `cols`) of mix on this shape: 8 experts, n_gqa() = 4,
    an importance matrix given; then tensor_type_fallback."""
    if name.endswith("_norm.weight") or "ffn_gate_inp" in name:
        return "f32"
    base = BASE[mix]
    low = mix in LOW_BIT
    bump = "iq3_s" if mix in ("IQ2_S", "IQ2_M") else "q2_k"  # the 1-/2-bit branch's second choice
    layer = int(name.split(".")[1]) if name.startswith("blk.") else -1
    n = n_layers
    if name == "output.weight":
        t = "q5_k" if low or mix == "IQ3_XXS" else "q6_k"
    elif name == "token_embd.weight":
        t = bump if low else "iq3_s"  # IQ3_XXS -> iq3_s; IQ3_XS/S/M: the base, iq3_s
    elif ".attn_q." in name:
        t = {"IQ3_XS": "iq3_xxs", "IQ3_XXS": "iq2_s"}.get(mix, base)
    elif ".attn_k." in name or ".attn_v." in name:
        t = "q4_k" if low else "q8_0"  # low: n_expert == 8 / n_gqa() >= 4 -> q4_k; else n_expert == 8 -> q8_0
    elif ".attn_output." in name:
        t = "q5_k"  # n_expert == 8: every one of these mixes
    elif "ffn_down" in name:
        if low:
            t = bump if layer < n // 8 else base
        elif mix == "IQ3_M" and (layer < n // 8 or more_bits(layer, n)):
            t = "q4_k"
        else:
            t = base  # IQ3_XXS with an imatrix
    elif "ffn_gate_exps" in name or "ffn_up_exps" in name:
        t = "iq3_xxs" if mix == "IQ3_XS" and n // 8 <= layer < 7 * n // 8 else base
    else:
        raise ValueError(name)
    if cols % BLOCK.get(t, 256):
        t = {"q2_k": "q4_0", "q3_k": "q4_0", "q4_k": "q5_0", "q5_k": "q5_1", "q6_k": "q8_0"}.get(t, "iq4_nl")
        if cols % BLOCK[t]:
            t = "f16"
    return t


def rms_err(a, b):
    a, b = a.astype(np.float64), b.astype(np.float64)
    return float(np.sqrt(np.mean((a - b) ** 2) / np.mean(b ** 2)))


def tensor_infos(path):
    """{name: (type name, row length)}."""
    raw = open(path, "rb").read()
    _, infos, _ = reference.gguf_header(raw, path)
    return {name: (GGML_NAMES.get(t, str(t)), ne[0]) for name, ne, t, _ in infos}


def check_types(label, path, mix, n_layers):
    infos = tensor_infos(path)
    wrong = {n: (t, want_type(n, mix, n_layers, cols)) for n, (t, cols) in infos.items()
             if t != want_type(n, mix, n_layers, cols)}
    check(not wrong, f"{label}: tensor types as llama.cpp's {mix} mix ({len(infos)} tensors; wrong (got, want): "
                     f"{wrong})")
    return infos


def make_model(r, workdir, args, text):
    """An f32 model (merged experts), its importance matrix, and a densely routed copy of the f32 file."""
    r.run([r.mixtral, "make-test-model", workdir] + args + ["--types", "f32", "--layouts", "gguf-merged"])
    f32 = fid.model_path(workdir, "gguf-merged", "f32")
    imatrix = os.path.join(workdir, "imatrix.gguf")
    r.run([r.mixtral, "imatrix", "--model", f32, "--text-file", text, "--ctx", "64", "-o", imatrix,
           "--threads", str(r.threads)])
    dense = os.path.join(workdir, "f32-dense.gguf")
    shutil.copy(f32, dense)
    route_densely(dense)
    return f32, imatrix, dense


def quantize(r, src, out, mix, extra=()):
    return subprocess.run([r.mixtral, "quantize", src, out, mix, "--threads", str(r.threads)] + list(extra),
                          capture_output=True, text=True, timeout=300)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mixtral", required=True)
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--node", default="node")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--group", choices=sorted(GROUPS), action="append",
                    help="the mixes to check (default: all groups)")
    a = ap.parse_args()
    mixes = [m for g in (a.group or sorted(GROUPS)) for m in GROUPS[g]]
    reference.register_iq(reference.ggml_common_h())
    shutil.rmtree(a.workdir, ignore_errors=True)
    os.makedirs(a.workdir)
    r = fid.Runner(argparse.Namespace(mixtral=a.mixtral, workdir=a.workdir, node=a.node, threads=a.threads))
    try:
        text = os.path.join(a.workdir, "text.txt")
        open(text, "w", encoding="utf-8").write(TEXT)
        f32, imatrix, dense = make_model(r, os.path.join(a.workdir, "main"), ARGS, text)
        f32_logits = r.score(dense, PROMPT)
        for mix in mixes:
            label = mix.lower()
            path = os.path.join(a.workdir, f"{label}.gguf")
            p = quantize(r, f32, path, mix, ["--imatrix", imatrix])
            check(p.returncode == 0, f"{label}: quantize --imatrix exit {p.returncode} {p.stderr.strip()[-300:]}")
            if p.returncode != 0:
                continue
            infos = check_types(label, path, mix, 2)
            route_densely(path)
            ours, _ = check_logits(r, label, path, PROMPT)
            err = rms_err(ours, f32_logits)
            check(err <= TOL_VS_F32[mix], f"{label}: engine vs the f32 model's logits, relative RMS {err:.3g} "
                                          f"(bound {TOL_VS_F32[mix]:g})")
            r.forget_models()
            # Without --imatrix.
            needs = any(t in NEEDS_IMATRIX for n, (t, _) in infos.items()
                        if n not in ("token_embd.weight", "output.weight"))
            plain = os.path.join(a.workdir, f"{label}-plain.gguf")
            if needs:
                p = quantize(r, f32, plain, mix)
                lines = p.stderr.strip().splitlines()
                check(p.returncode == 2 and len(lines) == 1 and
                      lines[0].endswith(f"{mix} needs an importance matrix: --imatrix FILE")
                      and not os.path.exists(plain),
                      f"{label}: without --imatrix exit {p.returncode} (2), one line: {p.stderr.strip()!r}")
            elif mix == "IQ3_M":
                p = quantize(r, f32, plain, mix)
                check(p.returncode == 0, f"{label}: without --imatrix exit {p.returncode} {p.stderr[-300:]}")
                if p.returncode == 0:
                    check_types(f"{label} without --imatrix", plain, mix, 2)
                    route_densely(plain)
                    check(open(plain, "rb").read() != open(path, "rb").read(),
                          f"{label}: --imatrix changes the quantized bytes")
        if "IQ2_XS" in mixes:
            check_fallback(r, a.workdir, text)
    except (RuntimeError, subprocess.TimeoutExpired) as e:
        check(False, str(e))
    finally:
        shutil.rmtree(r.tmp, ignore_errors=True)
    return fid.summary()


def check_fallback(r, workdir, text):
    """ffn_down rows of 288: IQ2_XS -> iq4_nl there (the 256-block i-quants' fallback), loaded by llama.cpp."""
    args = list(ARGS)
    args[args.index("--ffn") + 1] = "288"
    args[args.index("--layers") + 1] = "1"
    f32, imatrix, _ = make_model(r, os.path.join(workdir, "fallback"), args, text)
    path = os.path.join(workdir, "iq2_xs-ffn288.gguf")
    p = quantize(r, f32, path, "IQ2_XS", ["--imatrix", imatrix])
    check(p.returncode == 0 and "ffn_down_exps.weight: row length 288" in p.stderr and "iq4_nl" in p.stderr,
          f"iq2_xs-ffn288: exit {p.returncode}, the fallback said on stderr: {p.stderr.strip()[-300:]!r}")
    if p.returncode != 0:
        return
    infos = check_types("iq2_xs-ffn288", path, "IQ2_XS", 1)
    check(infos["blk.0.ffn_down_exps.weight"][0] == "iq4_nl", "iq2_xs-ffn288: ffn_down in iq4_nl")
    route_densely(path)
    check_logits(r, "iq2_xs-ffn288", path, PROMPT)
    r.forget_models()


if __name__ == "__main__":
    sys.exit(main())
