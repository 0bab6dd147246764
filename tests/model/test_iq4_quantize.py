#!/usr/bin/python3
"""`mixtral quantize` to IQ4_XS and IQ4_NL end to end: files our quantizers write load in llama.cpp
(node-llama-cpp) and give our logits, and the float64 NumPy reference (its own decoders, tables read from
llama.cpp's source) gives them too.

The model is test_fidelity.py's shape a with --ffn 288 (rows of ffn_down are 288 long: not whole 256-blocks,
so IQ4_XS falls back to IQ4_NL there, as llama.cpp does), written f32 by make-test-model and quantized by
`mixtral quantize` to IQ4_XS, IQ4_XS --imatrix (an importance matrix from `mixtral imatrix` on a short text)
and IQ4_NL. Every token is routed to all experts (expert_used_count patched to expert_count in the quantized
files): with 4-bit weights and llama.cpp's quantized activations a near-tied top-2 choice could flip, and a
flip would reach every later position through the KV cache; dense routing has nothing to flip, so every
position of the 48-token prompt is compared.

Checks, per file:
  * the tensor types: router and norms f32, attn_k/attn_v q8_0 and attn_output q5_k (MoE), output q6_k,
    token_embd, attn_q, ffn_gate and ffn_up in the type, ffn_down iq4_nl (the row fallback);
  * engine vs llama.cpp, every position, within test_fidelity's K-quant bound;
  * engine vs the reference within test_fidelity's bound for quantized weights;
  * with --imatrix the quantized bytes differ from those without (the weights are used).
"""
import argparse
import os
import shutil
import struct
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import test_fidelity as fid  # noqa: E402  (shapes, runner, bounds)
from test_fidelity import check, reference  # noqa: E402
from test_iquants import check_logits  # noqa: E402  (engine vs reference and llama.cpp, the same bounds)

# Bounds (test_iquants.check_logits, relative to max|logit|, every position). Measured: engine vs llama.cpp
# 0.0133 (iq4_xs), 0.0129 (iq4_xs --imatrix), 8e-7 .. 1.6e-6 (iq4_nl: both quantize the activations to Q8_0
# alike); vs reference 0.011 each.
TEXT = ("In the beginning was the Word, and the Word was with God, and the Word was God. The same was in the "
        "beginning with God. All things were made by him; and without him was not any thing made that was "
        "made. In him was life; and the life was the light of men. And the light shineth in darkness; and "
        "the darkness comprehended it not. ") * 4


def args_ffn(shape_args, ffn):
    out = list(shape_args)
    out[out.index("--ffn") + 1] = str(ffn)
    return out


def route_densely(path):
    """Sets llama.expert_used_count to expert_count in place (a u32: same size)."""
    raw = bytearray(open(path, "rb").read())
    meta, _, _ = reference.gguf_header(bytes(raw), path)
    r = reference._Reader(bytes(raw))
    r.pos = 24
    for _ in range(len(meta)):
        key = r.string()
        vtype = r.scalar("<u4")
        r.value(vtype)
        if key.endswith(".expert_used_count"):
            assert vtype == 4, key
            struct.pack_into("<I", raw, r.pos - 4, meta[key.replace("used_count", "count")])
    open(path, "wb").write(raw)


def tensor_types(path):
    raw = open(path, "rb").read()
    _, infos, _ = reference.gguf_header(raw, path)
    names = {v: k for k, v in reference.IQ_TYPES.items()}
    names.update({reference.GGML_F32: "f32", reference.GGML_Q8_0: "q8_0", reference.GGML_Q5_K: "q5_k",
                  reference.GGML_Q6_K: "q6_k"})
    return {name: names.get(t, str(t)) for name, _, t, _ in infos}


def want_type(name, base):
    if name.endswith("_norm.weight") or "ffn_gate_inp" in name:
        return "f32"
    if "attn_k." in name or "attn_v." in name:
        return "q8_0"
    if "attn_output" in name:
        return "q5_k"
    if name == "output.weight":
        return "q6_k"
    if "ffn_down" in name:
        return "iq4_nl"
    return base


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mixtral", required=True)
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--node", default="node")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    reference.register_iq(reference.ggml_common_h())
    shape = fid.SHAPES["a"]
    prompt = shape["prompt"]
    shutil.rmtree(a.workdir, ignore_errors=True)
    r = fid.Runner(argparse.Namespace(mixtral=a.mixtral, workdir=a.workdir, node=a.node, threads=a.threads))
    try:
        r.run([a.mixtral, "make-test-model", a.workdir] + args_ffn(shape["args"], 288) +
              ["--types", "f32", "--layouts", "gguf-merged"])
        f32 = fid.model_path(a.workdir, "gguf-merged", "f32")
        text = os.path.join(a.workdir, "text.txt")
        open(text, "w", encoding="utf-8").write(TEXT)
        imatrix = os.path.join(a.workdir, "imatrix.gguf")
        r.run([a.mixtral, "imatrix", "--model", f32, "--text-file", text, "--ctx", "64", "-o", imatrix,
               "--threads", str(a.threads)])
        files = {}
        runs = (("iq4_xs", "IQ4_XS", []), ("iq4_xs-imatrix", "IQ4_XS", ["--imatrix", imatrix]),
                ("iq4_nl", "IQ4_NL", []))
        for label, tn, extra in runs:
            path = os.path.join(a.workdir, f"gguf-merged-{label}.gguf")
            r.run([a.mixtral, "quantize", f32, path, tn, "--threads", str(a.threads)] + extra)
            route_densely(path)
            files[label] = path
            base = tn.lower()
            types = tensor_types(path)
            wrong = {n: t for n, t in types.items() if t != want_type(n, base)}
            check(not wrong, f"{label}: tensor types as llama.cpp's {tn} mix ({len(types)} tensors; "
                             f"wrong: {wrong})")
            check_logits(r, label, path, prompt)  # dense routing: every position compared
            r.forget_models()
        plain, weighted = (open(files[k], "rb").read() for k in ("iq4_xs", "iq4_xs-imatrix"))
        check(len(plain) == len(weighted) and plain != weighted,
              "iq4_xs: --imatrix changes the quantized bytes (same size)")
    except (RuntimeError, subprocess.TimeoutExpired) as e:
        check(False, str(e))
    finally:
        shutil.rmtree(r.tmp, ignore_errors=True)
    return fid.summary()


if __name__ == "__main__":
    sys.exit(main())
