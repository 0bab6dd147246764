#!/usr/bin/python3
"""An independent float64 NumPy reference of Hugging Face's MixtralForCausalLM.

It shares nothing with mixtral.cpp: its own safetensors and GGUF parsers, its own dequantisers
(F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, Q8_K; written from GGML's
block layouts; the i-quants IQ1_S .. IQ4_XS too once register_iq has GGML's grids from llama.cpp's own
source) and its own forward pass, written from the Hugging Face semantics:

    h = embed(tokens)
    per layer:  x = rms(h) * w_in;  q, k, v = Wq x, Wk x, Wv x;  RoPE (rotate-half) on q, k;
                h += Wo softmax(q k^T / sqrt(hd) + causal mask) v        (GQA: k, v repeated)
                x = rms(h) * w_post;  p = softmax(gate x) over all experts;  top-k, renormalised;
                h += sum_e p_e * W2_e (silu(W1_e x) * W3_e x)
    logits = lm_head(rms(h) * w_norm)

Model paths: a Hugging Face directory (config.json and one or many safetensors shards, f32/f16/bf16),
a Mistral consolidated directory (params.json; wq/wk rows interleaved, un-permuted here), or a GGUF
file (merged or per-expert experts; attn_q/attn_k interleaved, un-permuted here).

CLI:
  reference.py logits   --model PATH --tokens 1,2,3 --out FILE.npy [--routing-out FILE.json]
  reference.py generate --model PATH --tokens 1,2,3 -n 32
Uses only the Python standard library and NumPy.
"""
import argparse
import json
import os
import struct
import sys

import numpy as np

# ------------------------------------------------------------------------------------------------
# safetensors


def _st_read(path):
    """Returns {name: float64 array} for one .safetensors file."""
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack_from("<Q", raw, 0)
    header = json.loads(raw[8:8 + n])
    base = 8 + n
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        b, e = info["data_offsets"]
        buf = raw[base + b:base + e]
        shape = tuple(info["shape"])
        dt = info["dtype"]
        if dt == "F32":
            a = np.frombuffer(buf, dtype="<f4")
        elif dt == "F16":
            a = np.frombuffer(buf, dtype="<f2")
        elif dt == "BF16":
            a = (np.frombuffer(buf, dtype="<u2").astype(np.uint32) << 16).view(np.float32)
        else:
            raise ValueError(f"{path}: tensor {name}: dtype {dt} not supported by the reference")
        out[name] = a.astype(np.float64).reshape(shape)
    return out


# ------------------------------------------------------------------------------------------------
# GGUF

_GGUF_SCALARS = {0: "<u1", 1: "<i1", 2: "<u2", 3: "<i2", 4: "<u4", 5: "<i4", 6: "<f4", 7: "<u1",
                 10: "<u8", 11: "<i8", 12: "<f8"}
GGML_F32, GGML_F16, GGML_Q4_0, GGML_Q8_0, GGML_BF16 = 0, 1, 2, 8, 30
GGML_Q4_1, GGML_Q5_0, GGML_Q5_1 = 3, 6, 7
GGML_Q2_K, GGML_Q3_K, GGML_Q4_K, GGML_Q5_K, GGML_Q6_K, GGML_Q8_K = 10, 11, 12, 13, 14, 15
QK_K = 256


class _Reader:
    def __init__(self, raw):
        self.raw, self.pos = raw, 0

    def scalar(self, fmt):
        v = np.frombuffer(self.raw, dtype=fmt, count=1, offset=self.pos)[0]
        self.pos += np.dtype(fmt).itemsize
        return v.item()

    def string(self):
        n = self.scalar("<u8")
        s = self.raw[self.pos:self.pos + n].decode("utf-8")
        self.pos += n
        return s

    def value(self, t):
        if t == 8:
            return self.string()
        if t == 9:
            et, n = self.scalar("<u4"), self.scalar("<u8")
            if et in _GGUF_SCALARS:
                fmt = _GGUF_SCALARS[et]
                a = np.frombuffer(self.raw, dtype=fmt, count=n, offset=self.pos)
                self.pos += n * np.dtype(fmt).itemsize
                return a.tolist()
            return [self.value(et) for _ in range(n)]
        v = self.scalar(_GGUF_SCALARS[t])
        return bool(v) if t == 7 else v


def _dequantize(ggml_type, buf, n):
    """n elements of GGML type `ggml_type` from bytes `buf`, as float64."""
    if ggml_type == GGML_F32:
        return np.frombuffer(buf, dtype="<f4", count=n).astype(np.float64)
    if ggml_type == GGML_F16:
        return np.frombuffer(buf, dtype="<f2", count=n).astype(np.float64)
    if ggml_type == GGML_BF16:
        u = np.frombuffer(buf, dtype="<u2", count=n).astype(np.uint32) << 16
        return u.view(np.float32).astype(np.float64)
    if ggml_type == GGML_Q8_0:  # blocks of 32: f16 scale d, 32 int8 q; x = d * q
        blk = np.dtype([("d", "<f2"), ("qs", "i1", 32)])
        b = np.frombuffer(buf, dtype=blk, count=n // 32)
        return (b["d"].astype(np.float64)[:, None] * b["qs"].astype(np.float64)).reshape(n)
    if ggml_type == GGML_Q4_0:  # blocks of 32: f16 d, 16 bytes; low nibbles 0..15, high 16..31
        blk = np.dtype([("d", "<f2"), ("qs", "u1", 16)])
        b = np.frombuffer(buf, dtype=blk, count=n // 32)
        q = np.concatenate([b["qs"] & 0x0F, b["qs"] >> 4], axis=1).astype(np.float64) - 8.0
        return (b["d"].astype(np.float64)[:, None] * q).reshape(n)
    if ggml_type in _DEQUANT:
        blk, fn = _DEQUANT[ggml_type]
        return fn(np.frombuffer(buf, dtype=blk, count=n // _GGML_BLOCK[ggml_type][0])).reshape(n)
    raise ValueError(f"GGML type {ggml_type} not supported by the reference")


def _f64(a):
    return a.astype(np.float64)


def _bits(a, nbits):
    """[nb, k] bytes -> [nb, k * 8 // nbits] fields of nbits, lowest bits of each byte first, byte-major."""
    shifts = np.arange(0, 8, nbits, dtype=np.uint8)
    return ((a[:, :, None] >> shifts) & ((1 << nbits) - 1)).reshape(a.shape[0], -1)


def _nibble_halves(qs):
    """32-element blocks of 16 bytes: low nibbles are elements 0..15, high nibbles 16..31."""
    return np.concatenate([qs & 0x0F, qs >> 4], axis=1)


def _qh32(qh):
    """[nb, 4] bytes, one little-endian u32 -> [nb, 32] bits, bit i = element i."""
    return _bits(qh, 1)


def _q4_1(b):  # x = d q + m
    return _f64(b["d"])[:, None] * _nibble_halves(b["qs"]) + _f64(b["m"])[:, None]


def _q5_0(b):  # x = d (q - 16), q = nibble | bit << 4
    q = _nibble_halves(b["qs"]).astype(np.int64) | (_qh32(b["qh"]).astype(np.int64) << 4)
    return _f64(b["d"])[:, None] * (q - 16)


def _q5_1(b):
    q = _nibble_halves(b["qs"]).astype(np.int64) | (_qh32(b["qh"]).astype(np.int64) << 4)
    return _f64(b["d"])[:, None] * q + _f64(b["m"])[:, None]


def _k_2bit(qs):
    """[nb, 64] bytes of 2-bit fields -> [nb, 256]: per 128-element half h (32 bytes), element 32k + l
    is bits 2k..2k+1 of byte l."""
    nb = qs.shape[0]
    q = qs.reshape(nb, 2, 1, 32) >> (2 * np.arange(4, dtype=np.uint8)).reshape(1, 1, 4, 1)
    return (q & 3).reshape(nb, 256).astype(np.int64)


def _q2_k(b):  # 16 sub-blocks of 16: scales[s] = sc | mn << 4; x = d sc q - dmin mn
    sc = np.repeat(_f64(b["scales"] & 0x0F), 16, axis=1)
    mn = np.repeat(_f64(b["scales"] >> 4), 16, axis=1)
    return _f64(b["d"])[:, None] * sc * _k_2bit(b["qs"]) - _f64(b["dmin"])[:, None] * mn


def _q3_k(b):  # x = d (s - 32) (q - 4), q = 2 low bits | hmask bit << 2
    nb = b.shape[0]
    raw = b["scales"].astype(np.int64)  # [nb, 12]
    low = np.concatenate([raw[:, 0:8] & 0x0F, raw[:, 0:8] >> 4], axis=1)  # scales 0..7, then 8..15
    s = np.arange(16)
    high = (raw[:, 8 + s % 4] >> (2 * (s // 4))) & 3
    scales = (low | (high << 4)) - 32
    # hmask: element e has bit e // 32 of byte e % 32.
    e = np.arange(256)
    hbit = (b["hmask"][:, e % 32].astype(np.int64) >> (e // 32)) & 1
    q = _k_2bit(b["qs"]) + 4 * hbit - 4
    return _f64(b["d"])[:, None] * np.repeat(scales, 16, axis=1) * q


def _k_scales(raw):
    """Q4_K/Q5_K 12 bytes -> 8 six-bit scales and 8 mins (sub-blocks of 32)."""
    raw = raw.astype(np.int64)
    sc = np.empty((raw.shape[0], 8), dtype=np.int64)
    mn = np.empty_like(sc)
    sc[:, :4], mn[:, :4] = raw[:, 0:4] & 63, raw[:, 4:8] & 63
    sc[:, 4:] = (raw[:, 8:12] & 0x0F) | ((raw[:, 0:4] >> 6) << 4)
    mn[:, 4:] = (raw[:, 8:12] >> 4) | ((raw[:, 4:8] >> 6) << 4)
    return sc, mn


def _k_nibbles(qs):
    """[nb, 128] bytes -> [nb, 256]: 64-element group j holds the low nibbles of bytes 32j..32j+31,
    then their high nibbles."""
    nb = qs.shape[0]
    q = qs.reshape(nb, 4, 1, 32) >> np.array([0, 4], dtype=np.uint8).reshape(1, 1, 2, 1)
    return (q & 0x0F).reshape(nb, 256).astype(np.int64)


def _q4_k(b):  # x = d sc q - dmin mn, 8 sub-blocks of 32
    sc, mn = _k_scales(b["scales"])
    return (_f64(b["d"])[:, None] * np.repeat(sc, 32, axis=1) * _k_nibbles(b["qs"])
            - _f64(b["dmin"])[:, None] * np.repeat(mn, 32, axis=1))


def _q5_k(b):  # Q4_K plus a fifth bit: sub-block j's element l has bit j of qh[l]
    sc, mn = _k_scales(b["scales"])
    e = np.arange(256)
    high = (b["qh"][:, e % 32].astype(np.int64) >> (e // 32)) & 1
    q = _k_nibbles(b["qs"]) + 16 * high
    return (_f64(b["d"])[:, None] * np.repeat(sc, 32, axis=1) * q
            - _f64(b["dmin"])[:, None] * np.repeat(mn, 32, axis=1))


def _q6_k(b):  # x = d sc (q - 32), q = 4 low bits (ql) | 2 high bits (qh) << 4
    nb = b.shape[0]
    e = np.arange(256)
    h, k, l = e // 128, (e % 128) // 32, e % 32
    lo_byte = b["ql"][:, 64 * h + l + 32 * (k & 1)].astype(np.int64)
    low = np.where(k < 2, lo_byte & 0x0F, lo_byte >> 4)
    high = (b["qh"][:, 32 * h + l].astype(np.int64) >> (2 * k)) & 3
    q = (low | (high << 4)) - 32
    return _f64(b["d"])[:, None] * np.repeat(b["scales"].astype(np.int64), 16, axis=1) * q


def _q8_k(b):  # x = d q (f32 d); bsums unused
    return _f64(b["d"])[:, None] * b["qs"]


_DEQUANT = {
    GGML_Q4_1: (np.dtype([("d", "<f2"), ("m", "<f2"), ("qs", "u1", 16)]), _q4_1),
    GGML_Q5_0: (np.dtype([("d", "<f2"), ("qh", "u1", 4), ("qs", "u1", 16)]), _q5_0),
    GGML_Q5_1: (np.dtype([("d", "<f2"), ("m", "<f2"), ("qh", "u1", 4), ("qs", "u1", 16)]), _q5_1),
    GGML_Q2_K: (np.dtype([("scales", "u1", 16), ("qs", "u1", 64), ("d", "<f2"), ("dmin", "<f2")]), _q2_k),
    GGML_Q3_K: (np.dtype([("hmask", "u1", 32), ("qs", "u1", 64), ("scales", "u1", 12), ("d", "<f2")]), _q3_k),
    GGML_Q4_K: (np.dtype([("d", "<f2"), ("dmin", "<f2"), ("scales", "u1", 12), ("qs", "u1", 128)]), _q4_k),
    GGML_Q5_K: (np.dtype([("d", "<f2"), ("dmin", "<f2"), ("scales", "u1", 12), ("qh", "u1", 32),
                          ("qs", "u1", 128)]), _q5_k),
    GGML_Q6_K: (np.dtype([("ql", "u1", 128), ("qh", "u1", 64), ("scales", "i1", 16), ("d", "<f2")]), _q6_k),
    GGML_Q8_K: (np.dtype([("d", "<f4"), ("qs", "i1", 256), ("bsums", "<i2", 16)]), _q8_k),
}

_GGML_BLOCK = {GGML_F32: (1, 4), GGML_F16: (1, 2), GGML_BF16: (1, 2), GGML_Q8_0: (32, 34), GGML_Q4_0: (32, 18),
               GGML_Q4_1: (32, 20), GGML_Q5_0: (32, 22), GGML_Q5_1: (32, 24), GGML_Q2_K: (256, 84),
               GGML_Q3_K: (256, 110), GGML_Q4_K: (256, 144), GGML_Q5_K: (256, 176), GGML_Q6_K: (256, 210),
               GGML_Q8_K: (256, 292)}
for _t, (_blk, _) in _DEQUANT.items():
    assert _blk.itemsize == _GGML_BLOCK[_t][1], _t


# ------------------------------------------------------------------------------------------------
# GGML's i-quants. Their grids and sign table are data published in GGML's ggml-common.h; the reference
# takes them from llama.cpp's own source (the copy node-llama-cpp ships as a git bundle), never from
# mixtral.cpp, and registers the decoders with _dequantize once it has them (register_iq).

GGML_IQ2_XXS, GGML_IQ2_XS, GGML_IQ3_XXS, GGML_IQ1_S, GGML_IQ4_NL = 16, 17, 18, 19, 20
GGML_IQ3_S, GGML_IQ2_S, GGML_IQ4_XS, GGML_IQ1_M = 21, 22, 23, 29
IQ_TYPES = {"iq2_xxs": GGML_IQ2_XXS, "iq2_xs": GGML_IQ2_XS, "iq2_s": GGML_IQ2_S, "iq3_xxs": GGML_IQ3_XXS,
            "iq3_s": GGML_IQ3_S, "iq1_s": GGML_IQ1_S, "iq1_m": GGML_IQ1_M, "iq4_nl": GGML_IQ4_NL,
            "iq4_xs": GGML_IQ4_XS}
LLAMA_BUNDLE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "node_modules", "node-llama-cpp",
                            "llama", "gitRelease.bundle")


def ggml_common_h(bundle=LLAMA_BUNDLE):
    """The text of ggml/src/ggml-common.h from a llama.cpp git bundle (fetched into a scratch repository)."""
    import subprocess
    import tempfile
    if not os.path.exists(bundle):
        raise FileNotFoundError(f"{bundle}: no llama.cpp source bundle (npm install in tests/reference)")
    with tempfile.TemporaryDirectory(prefix="ggml-src-") as d:
        git = ["git", "-C", d]
        subprocess.run(["git", "init", "-q", d], check=True)
        subprocess.run(git + ["fetch", "-q", bundle], check=True, capture_output=True)
        return subprocess.run(git + ["show", "FETCH_HEAD:ggml/src/ggml-common.h"], check=True,
                              capture_output=True).stdout.decode()


def _ggml_table(text, name):
    import re
    m = re.search(r"GGML_TABLE_BEGIN\(\s*(\w+)\s*,\s*" + name + r"\s*,\s*(\w+)\s*\)(.*?)GGML_TABLE_END", text, re.S)
    if not m:
        raise ValueError(f"ggml-common.h: no table {name}")
    vals = [int(v, 0) for v in re.findall(r"-?(?:0x[0-9a-fA-F]+|\d+)", m.group(3))]
    size = int(m.group(2)) if m.group(2).isdigit() else int(
        re.search(r"#define\s+" + m.group(2) + r"\s+(\d+)", text).group(1))
    if len(vals) != size:
        raise ValueError(f"ggml-common.h: {name} has {len(vals)} values, declared {size}")
    return vals


def _points(entries, per, signed=False):
    """Grid entries (ints) -> [N, per] points, byte j of an entry = point j."""
    e = np.array(entries, dtype=np.uint64)[:, None]
    b = ((e >> (8 * np.arange(per, dtype=np.uint64))) & np.uint64(0xFF)).astype(np.int64)
    return np.where(b > 127, b - 256, b) if signed else b


def _sign_bits(byte):
    """[...] bytes -> [..., 8] factors +-1 (bit j set: element j negative)."""
    bits = (np.asarray(byte, dtype=np.int64)[..., None] >> np.arange(8)) & 1
    return 1.0 - 2.0 * bits


def register_iq(text):
    """Registers the i-quant decoders with _dequantize, using the tables of ggml-common.h's text."""
    import re
    g2xxs, g2xs, g2s = (_points(_ggml_table(text, n), 8) for n in ("iq2xxs_grid", "iq2xs_grid", "iq2s_grid"))
    g3xxs, g3s = (_points(_ggml_table(text, n), 4) for n in ("iq3xxs_grid", "iq3s_grid"))
    g1s = _points(_ggml_table(text, "iq1s_grid"), 8, signed=True)
    ksigns = np.array(_ggml_table(text, "ksigns_iq2xs"), dtype=np.int64)  # 7-bit code -> 8 sign bits
    k4 = np.array(_ggml_table(text, "kvalues_iq4nl"), dtype=np.float64)
    delta = float(re.search(r"#define\s+IQ1S_DELTA\s+([0-9.]+)", text).group(1))
    delta_m = float(re.search(r"#define\s+IQ1M_DELTA\s+([0-9.]+)", text).group(1))

    def word(b4):  # [..., 4] bytes -> little-endian u32
        return (b4.astype(np.int64) << (8 * np.arange(4))).sum(axis=-1)

    def iq2_xxs(b):  # per 32: 4 grid bytes, then a u32 of 4 x 7-bit sign codes and a 4-bit scale
        nb = b.shape[0]
        raw = b["qs"].reshape(nb, 8, 8)
        w = word(raw[:, :, 4:])                                   # [nb, 8]
        codes = (w[:, :, None] >> (7 * np.arange(4))) & 127      # [nb, 8, 4]
        v = g2xxs[raw[:, :, :4]] * _sign_bits(ksigns[codes])      # [nb, 8, 4, 8]
        sc = _f64(b["d"])[:, None] * (0.5 + (w >> 28)) / 4
        return (sc[:, :, None, None] * v).reshape(nb, 256)

    def iq2_xs(b):  # u16 per 8: 9-bit index, 7-bit sign code; a nibble scale per 16
        nb = b.shape[0]
        q = b["qs"].astype(np.int64).reshape(nb, 8, 4)
        v = g2xs[q & 511] * _sign_bits(ksigns[q >> 9])
        s = (b["scales"].astype(np.int64)[:, :, None] >> np.array([0, 0, 4, 4])) & 15  # [nb, 8, 4]
        sc = _f64(b["d"])[:, None, None] * (0.5 + s) / 4
        return (sc[..., None] * v).reshape(nb, 256)

    def iq2_s(b):  # 8-bit index + 2 bits of qh, a whole sign byte per 8
        nb = b.shape[0]
        hi = (b["qh"].astype(np.int64)[:, :, None] >> (2 * np.arange(4))) & 3              # [nb, 8, 4]
        idx = b["qs"].astype(np.int64).reshape(nb, 8, 4) | (hi << 8)
        v = g2s[idx] * _sign_bits(b["signs"].reshape(nb, 8, 4))
        s = (b["scales"].astype(np.int64)[:, :, None] >> np.array([0, 0, 4, 4])) & 15
        sc = _f64(b["d"])[:, None, None] * (0.5 + s) / 4
        return (sc[..., None] * v).reshape(nb, 256)

    def iq3_xxs(b):  # 64 4-point indices; per 32 a u32 of 4 sign codes and a scale
        nb = b.shape[0]
        vals = g3xxs[b["qs"].astype(np.int64)].reshape(nb, 8, 4, 8)                     # [nb, g, l, 8]
        w = b["sas"].astype(np.int64)                                                     # [nb, 8]
        sign = _sign_bits(ksigns[(w[:, :, None] >> (7 * np.arange(4))) & 127])           # [nb, 8, 4, 8]
        sc = _f64(b["d"])[:, None] * (0.5 + (w >> 28)) / 2
        return (sc[:, :, None, None] * vals * sign).reshape(nb, 256)

    def iq3_s(b):  # 8-bit index + 1 bit of qh per 4 points, sign bytes, a nibble scale per 32
        nb = b.shape[0]
        k = np.arange(64)
        idx = b["qs"].astype(np.int64) | (((b["qh"][:, k // 8].astype(np.int64) >> (k % 8)) & 1) << 8)
        vals = g3s[idx].reshape(nb, 256) * _sign_bits(b["signs"]).reshape(nb, 256)
        s = (b["scales"].astype(np.int64)[:, :, None] >> np.array([0, 4])) & 15          # [nb, 4, 2] -> g
        sc = _f64(b["d"])[:, None] * (1 + 2 * s.reshape(nb, 8))
        return np.repeat(sc, 32, axis=1) * vals

    def iq1_s(b):  # 11-bit indices of signed points, per 32 a 3-bit scale and the delta's sign
        nb = b.shape[0]
        h = b["qh"].astype(np.int64)                                                      # [nb, 8]
        idx = b["qs"].astype(np.int64).reshape(nb, 8, 4) | (((h[:, :, None] >> (3 * np.arange(4))) & 7) << 8)
        dl = np.where(h & 0x8000, -delta, delta)
        sc = _f64(b["d"])[:, None] * (2 * ((h >> 12) & 7) + 1)
        return (sc[:, :, None, None] * (g1s[idx] + dl[:, :, None, None])).reshape(nb, 256)

    def iq1_m(b):  # d in the top nibbles of the 4 scale words; a 3-bit scale per 16 in their low 12 bits
        nb = b.shape[0]
        sw = b["scales"].astype(np.int64)                                                 # [nb, 4]
        d16 = ((sw >> 12) << (4 * np.arange(4))).sum(axis=1).astype(np.uint16)
        d = d16.view(np.float16).astype(np.float64)
        q16 = np.arange(16)                                                               # 16-element runs
        s = (sw[:, q16 // 4] >> (3 * (q16 % 4))) & 7                                      # [nb, 16]
        nib = (b["qh"].astype(np.int64)[:, :, None] >> np.array([0, 4])) & 15             # [nb, 16, 2] -> 32 x 8
        nib = nib.reshape(nb, 32)
        idx = b["qs"].astype(np.int64) | ((nib & 7) << 8)
        dl = np.where(nib & 8, -delta_m, delta_m)
        v = g1s[idx] + dl[:, :, None]                                                     # [nb, 32, 8]
        sc = d[:, None] * (2 * np.repeat(s, 2, axis=1) + 1)                               # [nb, 32]
        return (sc[:, :, None] * v).reshape(nb, 256)

    def iq4_nl(b):
        return _f64(b["d"])[:, None] * k4[_nibble_halves(b["qs"])]

    def iq4_xs(b):
        nb = b.shape[0]
        g = np.arange(8)
        lo = (b["scales_l"][:, g // 2].astype(np.int64) >> (4 * (g % 2))) & 15
        hi = (b["scales_h"].astype(np.int64)[:, None] >> (2 * g)) & 3
        sc = _f64(b["d"])[:, None] * ((lo | (hi << 4)) - 32)                              # [nb, 8]
        q = b["qs"].reshape(nb * 8, 16)
        vals = k4[_nibble_halves(q)].reshape(nb, 8, 32)
        return (sc[:, :, None] * vals).reshape(nb, 256)

    f2 = ("d", "<f2")
    layouts = {
        GGML_IQ2_XXS: (np.dtype([f2, ("qs", "u1", 64)]), iq2_xxs),
        GGML_IQ2_XS: (np.dtype([f2, ("qs", "<u2", 32), ("scales", "u1", 8)]), iq2_xs),
        GGML_IQ2_S: (np.dtype([f2, ("qs", "u1", 32), ("signs", "u1", 32), ("qh", "u1", 8), ("scales", "u1", 8)]),
                     iq2_s),
        GGML_IQ3_XXS: (np.dtype([f2, ("qs", "u1", 64), ("sas", "<u4", 8)]), iq3_xxs),
        GGML_IQ3_S: (np.dtype([f2, ("qs", "u1", 64), ("qh", "u1", 8), ("signs", "u1", 32), ("scales", "u1", 4)]),
                     iq3_s),
        GGML_IQ1_S: (np.dtype([f2, ("qs", "u1", 32), ("qh", "<u2", 8)]), iq1_s),
        GGML_IQ1_M: (np.dtype([("qs", "u1", 32), ("qh", "u1", 16), ("scales", "<u2", 4)]), iq1_m),
        GGML_IQ4_NL: (np.dtype([f2, ("qs", "u1", 16)]), iq4_nl),
        GGML_IQ4_XS: (np.dtype([f2, ("scales_h", "<u2"), ("scales_l", "u1", 4), ("qs", "u1", 128)]), iq4_xs),
    }
    for t, (blk, fn) in layouts.items():
        _DEQUANT[t] = (blk, fn)
        _GGML_BLOCK[t] = (32 if t == GGML_IQ4_NL else QK_K, blk.itemsize)


def gguf_header(raw, path="GGUF"):
    """(metadata dict, [(name, ne in GGML order, ggml type, data offset)], start of the data) of GGUF bytes."""
    r = _Reader(raw)
    if raw[:4] != b"GGUF":
        raise ValueError(f"{path}: not a GGUF file")
    r.pos = 4
    version = r.scalar("<u4")
    if version not in (2, 3):
        raise ValueError(f"{path}: GGUF version {version}")
    n_tensors, n_kv = r.scalar("<u8"), r.scalar("<u8")
    meta = {}
    for _ in range(n_kv):
        key = r.string()
        meta[key] = r.value(r.scalar("<u4"))
    infos = []
    for _ in range(n_tensors):
        name = r.string()
        nd = r.scalar("<u4")
        ne = [r.scalar("<u8") for _ in range(nd)]
        infos.append((name, ne, r.scalar("<u4"), r.scalar("<u8")))
    align = meta.get("general.alignment", 32)
    return meta, infos, (r.pos + align - 1) // align * align


def gguf_tensor_bytes(ne, ggml_type):
    """Bytes of a tensor of shape ne (any order) and GGML type."""
    block, nbytes = _GGML_BLOCK[ggml_type]
    return int(np.prod(ne)) // block * nbytes


def gguf_read(path):
    """Returns (metadata dict, {name: float64 array in row-major shape}, {name: ggml type})."""
    with open(path, "rb") as f:
        raw = f.read()
    meta, infos, data_start = gguf_header(raw, path)
    tensors, types = {}, {}
    for name, ne, t, off in infos:
        n = int(np.prod(ne))
        nbytes = gguf_tensor_bytes(ne, t)
        start = data_start + off
        tensors[name] = _dequantize(t, raw[start:start + nbytes], n).reshape(tuple(reversed(ne)))
        types[name] = t
    return meta, tensors, types


# ------------------------------------------------------------------------------------------------
# Loading any layout into {config, HF-named float64 weights}


def unpermute_interleaved(w, n_heads, head_dim):
    """Rows in interleaved RoPE order (GGUF, consolidated) back to HF rotate-half order:
    interleaved row 2i + j of a head holds HF row j * hd/2 + i."""
    cols = w.shape[1]
    return w.reshape(n_heads, head_dim // 2, 2, cols).transpose(0, 2, 1, 3).reshape(n_heads * head_dim, cols)


def _hf_config(c):
    heads = c["num_attention_heads"]
    return dict(
        dim=c["hidden_size"], ffn=c["intermediate_size"], n_layers=c["num_hidden_layers"], n_heads=heads,
        n_kv_heads=c.get("num_key_value_heads", heads), head_dim=c.get("head_dim") or c["hidden_size"] // heads,
        eps=c.get("rms_norm_eps", 1e-5), theta=c.get("rope_theta", 1e6), n_experts=c["num_local_experts"],
        top_k=c["num_experts_per_tok"], vocab=c["vocab_size"], sliding_window=c.get("sliding_window") or 0,
        tie=bool(c.get("tie_word_embeddings", False)))


def load_hf(path):
    with open(os.path.join(path, "config.json")) as f:
        cfg = _hf_config(json.load(f))
    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
    else:
        files = sorted(p for p in os.listdir(path) if p.endswith(".safetensors"))
    w = {}
    for fn in files:
        w.update(_st_read(os.path.join(path, fn)))
    return cfg, w


def load_consolidated(path):
    with open(os.path.join(path, "params.json")) as f:
        p = json.load(f)
    heads = p["n_heads"]
    hd = p.get("head_dim") or p["dim"] // heads
    cfg = dict(dim=p["dim"], ffn=p["hidden_dim"], n_layers=p["n_layers"], n_heads=heads,
               n_kv_heads=p.get("n_kv_heads", heads), head_dim=hd, eps=p.get("norm_eps", 1e-5),
               theta=p.get("rope_theta", 1e6), n_experts=p["moe"]["num_experts"],
               top_k=p["moe"]["num_experts_per_tok"], vocab=p["vocab_size"],
               sliding_window=p.get("sliding_window") or 0, tie=False)
    src = {}
    for fn in sorted(os.listdir(path)):
        if fn.endswith(".safetensors"):
            src.update(_st_read(os.path.join(path, fn)))
    w = {"model.embed_tokens.weight": src["tok_embeddings.weight"], "model.norm.weight": src["norm.weight"],
         "lm_head.weight": src["output.weight"]}
    for l in range(cfg["n_layers"]):
        s, d = f"layers.{l}.", f"model.layers.{l}."
        w[d + "input_layernorm.weight"] = src[s + "attention_norm.weight"]
        w[d + "post_attention_layernorm.weight"] = src[s + "ffn_norm.weight"]
        w[d + "self_attn.q_proj.weight"] = unpermute_interleaved(src[s + "attention.wq.weight"], heads, hd)
        w[d + "self_attn.k_proj.weight"] = unpermute_interleaved(src[s + "attention.wk.weight"],
                                                                 cfg["n_kv_heads"], hd)
        w[d + "self_attn.v_proj.weight"] = src[s + "attention.wv.weight"]
        w[d + "self_attn.o_proj.weight"] = src[s + "attention.wo.weight"]
        w[d + "block_sparse_moe.gate.weight"] = src[s + "feed_forward.gate.weight"]
        for e in range(cfg["n_experts"]):
            for k in ("w1", "w2", "w3"):
                w[d + f"block_sparse_moe.experts.{e}.{k}.weight"] = src[s + f"feed_forward.experts.{e}.{k}.weight"]
    return cfg, w


def load_gguf(path):
    meta, src, _ = gguf_read(path)
    a = meta["general.architecture"]
    heads = meta[f"{a}.attention.head_count"]
    dim = meta[f"{a}.embedding_length"]
    hd = meta.get(f"{a}.attention.key_length", dim // heads)
    cfg = dict(dim=dim, ffn=meta[f"{a}.feed_forward_length"], n_layers=meta[f"{a}.block_count"], n_heads=heads,
               n_kv_heads=meta.get(f"{a}.attention.head_count_kv", heads), head_dim=hd,
               eps=meta[f"{a}.attention.layer_norm_rms_epsilon"], theta=meta.get(f"{a}.rope.freq_base", 10000.0),
               n_experts=meta[f"{a}.expert_count"], top_k=meta[f"{a}.expert_used_count"],
               vocab=src["token_embd.weight"].shape[0],
               sliding_window=meta.get(f"{a}.attention.sliding_window", 0), tie="output.weight" not in src)
    w = {"model.embed_tokens.weight": src["token_embd.weight"], "model.norm.weight": src["output_norm.weight"]}
    if not cfg["tie"]:
        w["lm_head.weight"] = src["output.weight"]
    for l in range(cfg["n_layers"]):
        s, d = f"blk.{l}.", f"model.layers.{l}."
        w[d + "input_layernorm.weight"] = src[s + "attn_norm.weight"]
        w[d + "post_attention_layernorm.weight"] = src[s + "ffn_norm.weight"]
        w[d + "self_attn.q_proj.weight"] = unpermute_interleaved(src[s + "attn_q.weight"], heads, hd)
        w[d + "self_attn.k_proj.weight"] = unpermute_interleaved(src[s + "attn_k.weight"], cfg["n_kv_heads"], hd)
        w[d + "self_attn.v_proj.weight"] = src[s + "attn_v.weight"]
        w[d + "self_attn.o_proj.weight"] = src[s + "attn_output.weight"]
        w[d + "block_sparse_moe.gate.weight"] = src[s + "ffn_gate_inp.weight"]
        for k, g in (("w1", "ffn_gate"), ("w3", "ffn_up"), ("w2", "ffn_down")):
            merged = src.get(s + g + "_exps.weight")  # [E, rows, cols]
            for e in range(cfg["n_experts"]):
                w[d + f"block_sparse_moe.experts.{e}.{k}.weight"] = (
                    merged[e] if merged is not None else src[s + f"{g}.{e}.weight"])
    return cfg, w


def load_model(path):
    """(config dict, HF-named float64 weights) of any supported layout."""
    if os.path.isdir(path):
        if os.path.exists(os.path.join(path, "config.json")):
            return load_hf(path)
        if os.path.exists(os.path.join(path, "params.json")):
            return load_consolidated(path)
        raise ValueError(f"{path}: neither config.json nor params.json")
    return load_gguf(path)


# ------------------------------------------------------------------------------------------------
# Forward pass (float64, Hugging Face semantics)


def rms_norm(x, w, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def rope_half(x, pos, theta):
    """x [n, heads, hd] rotated the rotate-half way at positions pos [n]."""
    hd = x.shape[-1]
    inv_freq = 1.0 / theta ** (np.arange(0, hd, 2, dtype=np.float64) / hd)  # [hd/2]
    freqs = pos[:, None].astype(np.float64) * inv_freq[None, :]              # [n, hd/2]
    emb = np.concatenate([freqs, freqs], axis=-1)                            # [n, hd]
    cos, sin = np.cos(emb)[:, None, :], np.sin(emb)[:, None, :]
    x1, x2 = x[..., :hd // 2], x[..., hd // 2:]
    rotated = np.concatenate([-x2, x1], axis=-1)
    return x * cos + rotated * sin


def silu(x):
    return x / (1.0 + np.exp(-x))


class Model:
    def __init__(self, path):
        self.path = path
        self.cfg, self.w = load_model(path)

    def forward(self, tokens, observe=None):
        """Logits [n, vocab] (float64) of every position, and routing records per layer and token:
        {"layer", "pos", "experts", "weights", "margin"} with margin = k-th largest router logit minus
        the (k+1)-th (inf when every expert is used). observe(layer, weight, expert, rows), if given, sees
        the input rows [m, cols] of every weight matmul: weight one of "q", "k", "v", "o" (expert None) and
        "w1", "w3", "w2" (an expert's routed tokens only)."""
        c, w = self.cfg, self.w
        tokens = np.asarray(tokens, dtype=np.int64)
        n = len(tokens)
        H, KV, hd, E, K = c["n_heads"], c["n_kv_heads"], c["head_dim"], c["n_experts"], c["top_k"]
        h = w["model.embed_tokens.weight"][tokens].copy()  # [n, dim]
        pos = np.arange(n)
        # mask[i, j]: key j visible to query i
        mask = pos[None, :] <= pos[:, None]
        if c["sliding_window"]:
            mask &= pos[None, :] > pos[:, None] - c["sliding_window"]
        routing = []
        for l in range(c["n_layers"]):
            p = f"model.layers.{l}."
            x = rms_norm(h, w[p + "input_layernorm.weight"], c["eps"])
            if observe:
                for name in ("q", "k", "v"):
                    observe(l, name, None, x)
            q = (x @ w[p + "self_attn.q_proj.weight"].T).reshape(n, H, hd)
            k = (x @ w[p + "self_attn.k_proj.weight"].T).reshape(n, KV, hd)
            v = (x @ w[p + "self_attn.v_proj.weight"].T).reshape(n, KV, hd)
            q, k = rope_half(q, pos, c["theta"]), rope_half(k, pos, c["theta"])
            k = np.repeat(k, H // KV, axis=1)  # repeat_kv: query head i uses kv head i // (H / KV)
            v = np.repeat(v, H // KV, axis=1)
            scores = np.einsum("ihd,jhd->hij", q, k) / np.sqrt(hd)  # [H, n, n]
            scores = np.where(mask[None], scores, -np.inf)
            scores -= scores.max(axis=-1, keepdims=True)
            probs = np.exp(scores)
            probs /= probs.sum(axis=-1, keepdims=True)
            att = np.einsum("hij,jhd->ihd", probs, v).reshape(n, H * hd)
            if observe:
                observe(l, "o", None, att)
            h = h + att @ w[p + "self_attn.o_proj.weight"].T

            x = rms_norm(h, w[p + "post_attention_layernorm.weight"], c["eps"])
            logits = x @ w[p + "block_sparse_moe.gate.weight"].T  # [n, E]
            pr = np.exp(logits - logits.max(axis=-1, keepdims=True))
            pr /= pr.sum(axis=-1, keepdims=True)
            order = np.argsort(-logits, axis=-1, kind="stable")  # experts by decreasing logit
            top = order[:, :K]
            tw = np.take_along_axis(pr, top, axis=-1)
            tw /= tw.sum(axis=-1, keepdims=True)
            srt = np.take_along_axis(logits, order, axis=-1)
            margins = srt[:, K - 1] - srt[:, K] if K < E else np.full(n, np.inf)
            out = np.zeros_like(h)
            for e in range(E):
                rows, slot = np.nonzero(top == e)
                if len(rows) == 0:
                    continue
                xe = x[rows]
                pe = p + f"block_sparse_moe.experts.{e}."
                y = silu(xe @ w[pe + "w1.weight"].T) * (xe @ w[pe + "w3.weight"].T)
                if observe:
                    observe(l, "w1", e, xe)
                    observe(l, "w3", e, xe)
                    observe(l, "w2", e, y)
                out[rows] += tw[rows, slot][:, None] * (y @ w[pe + "w2.weight"].T)
            h = h + out
            for i in range(n):
                routing.append({"layer": l, "pos": i, "experts": top[i].tolist(), "weights": tw[i].tolist(),
                                "margin": float(margins[i])})
        x = rms_norm(h, w["model.norm.weight"], c["eps"])
        head = w["model.embed_tokens.weight"] if c["tie"] else w["lm_head.weight"]
        return x @ head.T, routing

    def generate(self, tokens, n_new):
        """Greedy continuation: (ids, top-1 minus top-2 logit of each step)."""
        seq, ids, margins = list(tokens), [], []
        for _ in range(n_new):
            logits, _ = self.forward(seq)
            last = logits[-1]
            o = np.argsort(-last, kind="stable")
            ids.append(int(o[0]))
            margins.append(float(last[o[0]] - last[o[1]]))
            seq.append(int(o[0]))
        return ids, margins


def imatrix(model, chunks):
    """llama-imatrix's statistic over token chunks, each evaluated alone from position 0: {GGUF weight name:
    (sums [n_mat, cols], counts [n_mat])}, the sums of the squared inputs of each weight matmul per column and
    the tokens counted; the expert tensors (blk.L.ffn_{gate,up,down}_exps.weight) one row per expert over
    the tokens routed to it. Also returns the routing records of every chunk (their margins)."""
    c = model.cfg
    E, qd = c["n_experts"], c["n_heads"] * c["head_dim"]
    names = {"q": "attn_q", "k": "attn_k", "v": "attn_v", "o": "attn_output", "w1": "ffn_gate_exps",
             "w3": "ffn_up_exps", "w2": "ffn_down_exps"}
    cols = {"q": c["dim"], "k": c["dim"], "v": c["dim"], "o": qd, "w1": c["dim"], "w3": c["dim"], "w2": c["ffn"]}
    stats = {}
    for l in range(c["n_layers"]):
        for k, g in names.items():
            n_mat = 1 if k in ("q", "k", "v", "o") else E
            stats[f"blk.{l}.{g}.weight"] = (np.zeros((n_mat, cols[k])), np.zeros(n_mat, dtype=np.int64))

    def observe(layer, weight, expert, rows):
        sums, counts = stats[f"blk.{layer}.{names[weight]}.weight"]
        m = 0 if expert is None else expert
        sums[m] += np.sum(rows * rows, axis=0)
        counts[m] += rows.shape[0]

    routing = []
    for chunk in chunks:
        _, r = model.forward(chunk, observe)
        routing += r
    return stats, routing


def min_margin(routing):
    return min(r["margin"] for r in routing) if routing else float("inf")


# ------------------------------------------------------------------------------------------------
# CLI


def _tokens(s):
    try:
        return [int(t) for t in s.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--tokens: not a comma-separated list of ids: {s!r}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    lg = sub.add_parser("logits", help="logits of every position")
    lg.add_argument("--model", required=True)
    lg.add_argument("--tokens", required=True, type=_tokens)
    lg.add_argument("--out", required=True, help=".npy file, float64 [n, vocab]")
    lg.add_argument("--routing-out", help="JSON file: experts, weights and margin per layer and token")
    gn = sub.add_parser("generate", help="greedy continuation; prints a JSON array of ids")
    gn.add_argument("--model", required=True)
    gn.add_argument("--tokens", required=True, type=_tokens)
    gn.add_argument("-n", type=int, default=32)
    a = ap.parse_args(argv)

    m = Model(a.model)
    bad = [t for t in a.tokens if not 0 <= t < m.cfg["vocab"]]
    if bad or not a.tokens:
        ap.error(f"--tokens: ids must be in [0, {m.cfg['vocab']}), got {bad or 'none'}")
    if a.cmd == "logits":
        logits, routing = m.forward(a.tokens)
        np.save(a.out, logits)
        if a.routing_out:
            with open(a.routing_out, "w") as f:
                json.dump(routing, f)
        print(f"min router margin: {min_margin(routing):.6f}")
    else:
        ids, margins = m.generate(a.tokens, a.n)
        print(f"min top-1 margin: {min(margins):.6f}", file=sys.stderr)
        print(json.dumps(ids))
    return 0


if __name__ == "__main__":
    sys.exit(main())
