#!/usr/bin/env python3
"""Every bad input gets a one-line error naming the file and the field or tensor, exit status 2 for
usage errors and 1 for data errors, and never a crash. Each case damages a valid model written by
`mixtral make-test-model` in one way and runs `mixtral info` or `mixtral score` on it."""
import argparse
import json
import os
import shutil
import struct
import subprocess
import sys

FAILURES = []


def run(mixtral, args):
    p = subprocess.run([mixtral] + args, capture_output=True, text=True, timeout=300)
    return p.returncode, p.stdout, p.stderr


def expect(name, mixtral, args, code, *needles):
    rc, out, err = run(mixtral, args)
    problems = []
    if rc != code:
        problems.append(f"exit {rc}, expected {code}")
    if rc < 0 or "internal error" in err or "Sanitizer" in err:
        problems.append("crashed")
    lines = [l for l in err.strip().splitlines() if l]
    if code != 0 and len(lines) != 1:
        problems.append(f"expected a one-line error, got {len(lines)} lines")
    for n in needles:
        if n not in err:
            problems.append(f"message lacks {n!r}")
    status = "ok  " if not problems else "FAIL"
    print(f"{status} {name}: {err.strip()[:200]}")
    if problems:
        FAILURES.append(f"{name}: {'; '.join(problems)}\n  stderr: {err.strip()[:500]}")


# --- small helpers to damage files -----------------------------------------------------------

def read_st_header(path):
    data = open(path, "rb").read()
    n = struct.unpack("<Q", data[:8])[0]
    return json.loads(data[8:8 + n]), data[8 + n:]


def write_st(path, header, body):
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + body)


def gguf_tensor_infos(data):
    """Byte offsets of each tensor info's type field in a GGUF v3 file: {name: offset_of_type}."""
    pos = 24
    n_tensors, n_kv = struct.unpack_from("<QQ", data, 8)

    def skip_value(pos, t):
        sizes = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
        if t in sizes:
            return pos + sizes[t]
        if t == 8:
            return pos + 8 + struct.unpack_from("<Q", data, pos)[0]
        if t == 9:
            et, cnt = struct.unpack_from("<IQ", data, pos)
            pos += 12
            for _ in range(cnt):
                pos = skip_value(pos, et)
            return pos
        raise ValueError(t)

    for _ in range(n_kv):
        klen = struct.unpack_from("<Q", data, pos)[0]
        pos += 8 + klen
        t = struct.unpack_from("<I", data, pos)[0]
        pos = skip_value(pos + 4, t)
    infos = {}
    for _ in range(n_tensors):
        nlen = struct.unpack_from("<Q", data, pos)[0]
        name = data[pos + 8:pos + 8 + nlen].decode()
        pos += 8 + nlen
        nd = struct.unpack_from("<I", data, pos)[0]
        pos += 4 + 8 * nd
        infos[name] = pos
        pos += 4 + 8
    return infos


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mixtral", required=True)
    ap.add_argument("--workdir", required=True)
    a = ap.parse_args()
    mx, wd = a.mixtral, a.workdir
    shutil.rmtree(wd, ignore_errors=True)
    os.makedirs(wd)
    base = os.path.join(wd, "base")
    rc, _, err = run(mx, ["make-test-model", base, "--dim", "64", "--ffn", "64", "--layers", "1", "--heads", "4",
                          "--kv-heads", "2", "--experts", "4", "--vocab", "300", "--types", "f32,f16",
                          "--layouts", "hf,consolidated,gguf-merged"])
    assert rc == 0, err
    gguf = os.path.join(base, "gguf-merged-f32.gguf")
    gguf16 = os.path.join(base, "gguf-merged-f16.gguf")
    hf = os.path.join(base, "hf-f32")
    data = open(gguf, "rb").read()

    def variant(name, content):
        p = os.path.join(wd, name)
        with open(p, "wb") as f:
            f.write(content)
        return p

    # Sanity: the undamaged files load.
    expect("valid gguf", mx, ["info", "--model", gguf], 0)
    expect("valid hf", mx, ["info", "--model", hf], 0)

    # GGUF damage.
    for cut in (3, 20, 100, len(data) // 2, len(data) - 1):
        p = variant(f"trunc{cut}.gguf", data[:cut])
        expect(f"truncated gguf at {cut}", mx, ["info", "--model", p], 1, p)
    p = variant("magic.gguf", b"GGUX" + data[4:])
    expect("wrong magic", mx, ["info", "--model", p], 1, p)
    for ver in (1, 99):
        p = variant(f"v{ver}.gguf", data[:4] + struct.pack("<I", ver) + data[8:])
        expect(f"gguf version {ver}", mx, ["info", "--model", p], 1, p, "version")
    infos = gguf_tensor_infos(data)
    off = infos["blk.0.attn_q.weight"]
    p = variant("unknown_type.gguf", data[:off] + struct.pack("<I", 77) + data[off + 4:])
    expect("unknown ggml type", mx, ["info", "--model", p], 1, p, "blk.0.attn_q.weight", "77")
    d16 = open(gguf16, "rb").read()
    off = gguf_tensor_infos(d16)["token_embd.weight"]
    p = variant("q8_1.gguf", d16[:off] + struct.pack("<I", 9) + d16[off + 4:])  # q8_1 rows fit in f16's bytes
    expect("known but unsupported type", mx, ["info", "--model", p], 1, p, "token_embd.weight", "q8_1")

    # Hugging Face directory damage.
    def hf_variant(name, edit_config=None, edit_header=None):
        d = os.path.join(wd, name)
        shutil.copytree(hf, d)
        if edit_config:
            cfg = json.load(open(os.path.join(d, "config.json")))
            edit_config(cfg)
            json.dump(cfg, open(os.path.join(d, "config.json"), "w"))
        if edit_header:
            st = os.path.join(d, "model.safetensors")
            h, body = read_st_header(st)
            edit_header(h)
            write_st(st, h, body)
        return d

    d = hf_variant("missing", edit_header=lambda h: h.pop("model.layers.0.self_attn.k_proj.weight"))
    expect("missing tensor", mx, ["info", "--model", d], 1, "model.layers.0.self_attn.k_proj.weight")

    def add_extra(h):
        h["model.layers.0.mystery.weight"] = dict(h["model.norm.weight"])
    d = hf_variant("extra", edit_header=add_extra)
    expect("extra tensor", mx, ["info", "--model", d], 1, "model.layers.0.mystery.weight")

    def reshape(h):
        t = h["model.layers.0.self_attn.k_proj.weight"]
        t["shape"] = list(reversed(t["shape"]))
    d = hf_variant("misshapen", edit_header=reshape)
    expect("misshapen tensor", mx, ["info", "--model", d], 1, "model.layers.0.self_attn.k_proj.weight", "expected")

    def bad_dtype(h):
        h["model.norm.weight"]["dtype"] = "I32"
    d = hf_variant("dtype", edit_header=bad_dtype)
    expect("unknown safetensors dtype", mx, ["info", "--model", d], 1, "model.norm.weight", "I32")

    d = hf_variant("nofield", edit_config=lambda c: c.pop("hidden_size"))
    expect("config field missing", mx, ["info", "--model", d], 1, "config.json", "hidden_size")
    d = hf_variant("heads", edit_config=lambda c: (c.update(num_attention_heads=7), c.pop("head_dim", None)))
    expect("heads not dividing dim", mx, ["info", "--model", d], 1, "config.json", "num_attention_heads")
    d = hf_variant("topk", edit_config=lambda c: c.update(num_experts_per_tok=9))
    expect("top-k > experts", mx, ["info", "--model", d], 1, "config.json", "experts per token")
    d = hf_variant("kvheads", edit_config=lambda c: c.update(num_key_value_heads=3))
    expect("kv heads not dividing heads", mx, ["info", "--model", d], 1, "config.json", "key/value head")
    d = hf_variant("typed", edit_config=lambda c: c.update(hidden_size="64"))
    expect("config field of the wrong type", mx, ["info", "--model", d], 1, "config.json", "hidden_size")
    d = os.path.join(wd, "badjson")
    shutil.copytree(hf, d)
    open(os.path.join(d, "config.json"), "w").write('{"hidden_size": 64,')
    expect("malformed config.json", mx, ["info", "--model", d], 1, "config.json")

    cd = os.path.join(base, "consolidated-f32")
    d = os.path.join(wd, "params")
    shutil.copytree(cd, d)
    params = json.load(open(os.path.join(d, "params.json")))
    params["moe"]["num_experts_per_tok"] = 0
    json.dump(params, open(os.path.join(d, "params.json"), "w"))
    expect("params.json top-k 0", mx, ["info", "--model", d], 1, "params.json", "experts per token")

    # Pickles and missing files.
    p = variant("consolidated.00.pth", b"PK\x03\x04" + b"\0" * 100)
    expect("pickled checkpoint", mx, ["info", "--model", p], 1, "pickled")
    expect("no such file", mx, ["info", "--model", os.path.join(wd, "nope.gguf")], 1, "nope.gguf")

    # Requests.
    expect("token id >= vocab", mx, ["score", "--model", gguf, "--tokens", "1,300"], 2, "300", "out of range")
    expect("empty prompt", mx, ["score", "--model", gguf, "--tokens", ""], 2, "--tokens")
    expect("not a number", mx, ["score", "--model", gguf, "--tokens", "1,x"], 2, "--tokens")
    expect("prompt beyond the context", mx,
           ["score", "--model", gguf, "--tokens", "1,2,3,4,5,6,7,8", "--ctx-size", "4"], 2, "context")
    expect("generation beyond the context", mx,
           ["run", "--model", gguf, "--prompt-tokens", "1,2", "-n", "10", "--ctx-size", "8"], 2, "context")
    expect("bad top-p", mx, ["run", "--model", gguf, "--prompt-tokens", "1,2", "--top-p", "0"], 2, "--top-p")
    expect("unknown flag", mx, ["info", "--model", gguf, "--frobnicate"], 2)
    expect("no subcommand", mx, [], 2)

    if FAILURES:
        print("\n".join(FAILURES))
        print(f"{len(FAILURES)} failed")
        sys.exit(1)
    print("all bad inputs rejected cleanly")


if __name__ == "__main__":
    main()
