#!/usr/bin/python3
"""Our dequantize_row vs the independent NumPy dequantisers of tests/reference/reference.py, on blocks of
random bytes (every bit pattern of the quant fields, finite random fp16 scales) for every block type.

quant_dump writes <type>.bin (the blocks) and <type>.f32 (our float32 output). The reference decodes the
bytes in float64; the two agree to float32 rounding: |ours - ref| <= 2^-20 * (the block's largest |term|),
where a term is one product d*sc*q or dmin*mn (a wrong bit in any field is off by at least one quantum,
orders of magnitude more). Every type must also produce varied values (the check cannot pass on zeros).

The i-quants (iq1_s .. iq4_xs) index grids and a sign table that GGML publishes in ggml-common.h; the
reference reads them from llama.cpp's own source, the git bundle node-llama-cpp installs under
tests/reference/node_modules (reference.ggml_common_h), never from mixtral.cpp's generated copy. The
grids themselves are also checked here against the facts that define them (point sets, sign parity).
"""
import argparse
import os
import subprocess
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "reference"))
import reference  # noqa: E402

TYPES = {"q4_0": reference.GGML_Q4_0, "q8_0": reference.GGML_Q8_0, "q4_1": reference.GGML_Q4_1,
         "q5_0": reference.GGML_Q5_0, "q5_1": reference.GGML_Q5_1, "q2_k": reference.GGML_Q2_K,
         "q3_k": reference.GGML_Q3_K, "q4_k": reference.GGML_Q4_K, "q5_k": reference.GGML_Q5_K,
         "q6_k": reference.GGML_Q6_K, "q8_k": reference.GGML_Q8_K, **reference.IQ_TYPES}


def check_tables(text):
    """Facts about GGML's i-quant tables that do not depend on reading them the same way twice."""
    problems = []
    signs = reference._ggml_table(text, "ksigns_iq2xs")
    if signs != [c | (bin(c).count("1") & 1) << 7 for c in range(128)]:
        problems.append("ksigns_iq2xs is not code | parity << 7")
    for name, per, want in (("iq2xxs_grid", 8, {8, 25, 43}), ("iq2xs_grid", 8, {8, 25, 43}),
                            ("iq2s_grid", 8, {8, 25, 43}), ("iq3xxs_grid", 4, {4, 12, 20, 28, 36, 44, 52, 62}),
                            ("iq3s_grid", 4, set(range(1, 16, 2))), ("iq1s_grid", 8, {0, 1, 255})):
        entries = reference._ggml_table(text, name)
        pts = set(reference._points(entries, per).ravel().tolist())
        if pts != want or len(set(entries)) != len(entries):
            problems.append(f"{name}: points {sorted(pts)}, {len(set(entries))} distinct of {len(entries)}")
    return problems


# Normalised RMS error of our IQ4 quantizers on the dump's gaussian rows (64 x 1024), measured: iq4_nl 0.0765,
# iq4_xs 0.0771 (q4_0 0.0858); the bound is about 1.1x. The importance-weighted error of the weighted
# quantizer against the plain one (log-normal weights): measured 0.620 (iq4_nl), 0.629 (iq4_xs).
IQ4_NRMSE_BOUND = 0.085
WEIGHTED_RATIO_BOUND = 0.85


def check_quantizers(d):
    """Our quantize_row(_weighted) output for q4_0, iq4_nl, iq4_xs decoded by the NumPy dequantisers: the same
    values as our dequantize_row, and the errors against the input: IQ4 within its bound and below Q4_0's,
    the weighted quantizer's importance-weighted error below the plain one's."""
    failures = []
    x = np.fromfile(os.path.join(d, "gauss.f32"), dtype="<f4").astype(np.float64)
    qw = np.fromfile(os.path.join(d, "qw.f32"), dtype="<f4").astype(np.float64)
    cols = qw.size
    err, werr = {}, {}
    for name in ("q4_0", "iq4_nl", "iq4_xs"):
        t = TYPES[name]
        for kind in ("quant", "wquant"):
            raw = open(os.path.join(d, f"{name}.{kind}.bin"), "rb").read()
            ours = np.fromfile(os.path.join(d, f"{name}.{kind}.f32"), dtype="<f4").astype(np.float64)
            ref = reference._dequantize(t, raw, x.size)
            diff = np.abs(ours - ref).max() / np.abs(ref).max()
            ok = diff <= 2.0 ** -20 and np.unique(ref).size > 1000
            print(f"{'ok  ' if ok else 'FAIL'} {name} {kind}: our bytes decoded by the reference vs our "
                  f"dequantize_row: {diff:.3g} of max|x| (bound {2.0 ** -20:.3g})")
            if not ok:
                failures.append(f"{name} {kind} decode")
            e2 = (ref - x) ** 2
            if kind == "quant":
                err[name] = np.sqrt(e2.mean() / (x ** 2).mean())
            werr[(name, kind)] = (e2.reshape(-1, cols) * qw).sum()
    for name in ("iq4_nl", "iq4_xs"):
        ok = err[name] <= IQ4_NRMSE_BOUND and err[name] < err["q4_0"]
        print(f"{'ok  ' if ok else 'FAIL'} {name}: nrmse on gaussians {err[name]:.4f} "
              f"(bound {IQ4_NRMSE_BOUND}, q4_0 {err['q4_0']:.4f})")
        ratio = werr[(name, "wquant")] / werr[(name, "quant")]
        wok = ratio <= WEIGHTED_RATIO_BOUND
        print(f"{'ok  ' if wok else 'FAIL'} {name}: importance-weighted error, weighted / plain quantizer "
              f"{ratio:.3f} (bound {WEIGHTED_RATIO_BOUND})")
        if not ok:
            failures.append(f"{name} nrmse")
        if not wok:
            failures.append(f"{name} weighted")
    # Q4_0 takes no weights: the same bytes either way.
    plain, weighted = (open(os.path.join(d, f"q4_0.{k}.bin"), "rb").read() for k in ("quant", "wquant"))
    same = plain == weighted
    print(f"{'ok  ' if same else 'FAIL'} q4_0: importance weights change nothing")
    if not same:
        failures.append("q4_0 weighted")
    return failures


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dump", required=True, help="the quant_dump binary")
    a = ap.parse_args()
    text = reference.ggml_common_h()
    reference.register_iq(text)
    failures = check_tables(text)
    print(("FAIL " + "; ".join(failures)) if failures else "ok   GGML's i-quant tables: sign parity, point sets")
    with tempfile.TemporaryDirectory(prefix="mixtral-quant-") as d:
        subprocess.run([a.dump, d], check=True)
        for name, t in TYPES.items():
            raw = open(os.path.join(d, name + ".bin"), "rb").read()
            ours = np.fromfile(os.path.join(d, name + ".f32"), dtype="<f4").astype(np.float64)
            bs, bb = reference._GGML_BLOCK[t]
            if len(raw) % bb or len(raw) // bb * bs != ours.size:
                failures.append(f"{name}: {len(raw)} bytes and {ours.size} values do not match the block size")
                continue
            ref = reference._dequantize(t, raw, ours.size)
            # The scale of each block's terms: its largest |value| bounds d*sc*q - dmin*mn's parts only
            # loosely when they cancel, so use the largest |ref| over the block plus the offsets' share.
            blocks = ref.reshape(-1, bs)
            scale = np.abs(blocks).max(axis=1, keepdims=True) * 2 + 1e-30
            err = (np.abs(ours.reshape(-1, bs) - blocks) / scale).max()
            distinct = np.unique(ours).size
            ok = err <= 2.0 ** -20 and distinct >= min(ours.size // 4, 200)
            print(f"{'ok  ' if ok else 'FAIL'} {name}: {ours.size} values, {distinct} distinct, "
                  f"max error {err:.3g} of the block scale (bound {2.0 ** -20:.3g})")
            if not ok:
                failures.append(name)
        failures += check_quantizers(d)
    if failures:
        print("failures: " + ", ".join(failures))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
