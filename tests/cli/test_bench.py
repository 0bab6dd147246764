#!/usr/bin/python3
"""`mixtral bench` on the built-in model (models/tiny-kjv.gguf): the output contract other tools read.

1. `--json` prints one object on the last line with the issue's fields (pp_tps, tg_tps, threads, n_prompt,
   n_gen, bytes read per generated token) and ours (reps, bandwidth, roofline fraction, the in-place read of a
   token's weights and its fraction, peak RSS, kernel ISA),
   and the text lines above it carry the same rates.
2. bytes_per_token equals the count made here from the file's tensor table: attention, router and output
   weights whole, plus top-k of n experts' weights per layer.
3. With the bandwidth measured, roofline_fraction = tg_tps / (bandwidth / bytes_per_token), and the same for
   weights_roofline_fraction from the in-place read of the weights.
4. MIXTRAL_ISA=scalar is reported as such; bad arguments exit non-zero naming the option.
5. -d: the tests run after that many cached positions.
6. --parallel 1,3: a "parallel" array in the JSON, one object per value in order, whose rates agree with each
   other and with the text lines, and whose FLOPs per decode step equal the count made here from the tensor
   table's shapes; bad values exit 2 naming --parallel (or -n, --ctx-size).

  test_bench.py --mixtral BIN --model models/tiny-kjv.gguf
"""
import argparse
import json
import math
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tests", "reference"))
import reference  # noqa: E402

FAILURES = []


def check(ok, what):
    print(("ok   " if ok else "FAIL ") + what)
    if not ok:
        FAILURES.append(what)


def bench(mixtral, model, args, env=None):
    r = subprocess.run([mixtral, "bench", "--model", model] + args, capture_output=True, text=True,
                       env=dict(os.environ, **(env or {})))
    return r.returncode, r.stdout, r.stderr


def tensor_bytes(path):
    """{name: bytes} from the GGUF tensor table (the reference's reader, block sizes from the GGML table)."""
    with open(path, "rb") as f:
        meta, infos, _ = reference.gguf_header(f.read(), path)
    return meta, {name: reference.gguf_tensor_bytes(ne, t) for name, ne, t, _ in infos}


def expected_bytes_per_token(path):
    meta, sizes = tensor_bytes(path)
    arch = meta["general.architecture"]
    n_exp, k = meta[f"{arch}.expert_count"], meta[f"{arch}.expert_used_count"]
    other = experts = 0
    for name, b in sizes.items():
        if re.search(r"\.attn_(q|k|v|output)\.weight$|\.ffn_gate_inp\.weight$|^output\.weight$", name):
            other += b
        elif re.search(r"\.ffn_(gate|up|down)(_exps|\.\d+)\.weight$", name):
            experts += b
    if "output.weight" not in sizes:  # tied: the output head is the embedding table
        other += sizes["token_embd.weight"]
    return other + experts * k / n_exp


def expected_decode_flops(path, pos):
    """FLOPs of one decoded token at position pos, from the tensor shapes: 2 per weight it multiplies (attention
    projections, router, top-k of n experts' weights, the output head) and 4 per (query head, head dim,
    attended position) for the scores and the weighted values."""
    with open(path, "rb") as f:
        meta, infos, _ = reference.gguf_header(f.read(), path)
    arch = meta["general.architecture"]
    n_exp, k = meta[f"{arch}.expert_count"], meta[f"{arch}.expert_used_count"]
    n_heads, n_layers = meta[f"{arch}.attention.head_count"], meta[f"{arch}.block_count"]
    head_dim = meta.get(f"{arch}.attention.key_length", meta[f"{arch}.embedding_length"] // n_heads)
    elements = {name: math.prod(ne) for name, ne, _, _ in infos}
    weights = 0
    for name, n in elements.items():
        if re.search(r"\.attn_(q|k|v|output)\.weight$|\.ffn_gate_inp\.weight$|^output\.weight$", name):
            weights += n
        elif re.search(r"\.ffn_(gate|up|down)(_exps|\.\d+)\.weight$", name):
            weights += n * k / n_exp
    if "output.weight" not in elements:  # tied: the output head is the embedding table
        weights += elements["token_embd.weight"]
    return 2 * weights + 4 * n_heads * head_dim * (pos + 1) * n_layers


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mixtral", required=True)
    ap.add_argument("--model", required=True)
    a = ap.parse_args()

    # 1, 2: the JSON object and the text lines, bandwidth not measured.
    rc, out, err = bench(a.mixtral, a.model, ["-p", "24", "-n", "6", "-r", "2", "-t", "1", "--json",
                                              "--no-bandwidth"])
    check(rc == 0, f"bench exits 0 (stderr: {err.strip()[:200]})")
    lines = out.strip().splitlines()
    j = json.loads(lines[-1])
    for key in ("pp_tps", "tg_tps", "threads", "n_prompt", "n_gen", "bytes_per_token", "reps",
                "bandwidth_bytes_per_s", "roofline_fraction", "weights_bandwidth_bytes_per_s",
                "weights_roofline_fraction", "peak_rss_bytes", "isa"):
        check(key in j, f"JSON has {key}")
    check((j["n_prompt"], j["n_gen"], j["threads"], j["reps"]) == (24, 6, 1, 2),
          f"JSON echoes -p 24 -n 6 -t 1 -r 2: {j['n_prompt']}, {j['n_gen']}, {j['threads']}, {j['reps']}")
    check(j["pp_tps"] > 0 and j["tg_tps"] > 0, f"rates positive: pp {j['pp_tps']}, tg {j['tg_tps']}")
    text = "\n".join(lines[:-1])
    pp = re.search(r"^pp24: ([0-9.]+) tokens/s$", text, re.M)
    tg = re.search(r"^tg6: ([0-9.]+) tokens/s$", text, re.M)
    check(pp is not None and abs(float(pp.group(1)) - j["pp_tps"]) < 0.006,
          f"text pp24 line equals pp_tps {j['pp_tps']:.2f}")
    check(tg is not None and abs(float(tg.group(1)) - j["tg_tps"]) < 0.006,
          f"text tg6 line equals tg_tps {j['tg_tps']:.2f}")
    # Each rep's rate: as many as reps, and the aggregate (all tokens over all time) lies between them.
    for key, agg, tag in (("pp_tps_reps", j["pp_tps"], "pp24"), ("tg_tps_reps", j["tg_tps"], "tg6")):
        reps = j.get(key, [])
        check(len(reps) == 2 and all(v > 0 for v in reps), f"JSON {key} has 2 positive rates: {reps}")
        check(min(reps) - 0.01 <= agg <= max(reps) + 0.01, f"{key} {reps} bracket the aggregate {agg:.2f}")
        line = re.search(r"^" + tag + r" per rep: ([0-9.]+), ([0-9.]+)$", text, re.M)
        check(line is not None and all(abs(float(line.group(i + 1)) - reps[i]) < 0.006 for i in range(2)),
              f"text '{tag} per rep' line equals {key}")
    check(j["bandwidth_bytes_per_s"] == 0 and j["roofline_fraction"] == 0,
          "--no-bandwidth: bandwidth and roofline fraction 0")
    check(j["weights_bandwidth_bytes_per_s"] == 0 and j["weights_roofline_fraction"] == 0,
          "--no-bandwidth: in-place weights bandwidth and its fraction 0")
    check("in place" not in text, "--no-bandwidth: no in-place line")
    want = expected_bytes_per_token(a.model)
    check(abs(j["bytes_per_token"] - want) <= 1, f"bytes_per_token {j['bytes_per_token']} = {want:.0f} "
          "counted from the tensor table")
    size = os.path.getsize(a.model)
    check(0 < j["peak_rss_bytes"] < size + 256e6, f"peak RSS {j['peak_rss_bytes']} within file size + 256 MB")
    check(j["isa"] in ("scalar", "avx2", "avx512"), f"isa {j['isa']!r} is a kernel ISA")
    check("parallel" not in j, "no parallel array without --parallel")
    check(re.search(r"threads, 2 reps, " + re.escape(j["isa"]) + r" kernels$", text, re.M) is not None,
          "text header names the kernel ISA")

    # 3: the roofline fraction from the measured bandwidth.
    rc, out, err = bench(a.mixtral, a.model, ["-p", "0", "-n", "4", "-r", "1", "-t", "1", "--json"])
    check(rc == 0, f"bench with bandwidth exits 0 (stderr: {err.strip()[:200]})")
    j = json.loads(out.strip().splitlines()[-1])
    bw = j["bandwidth_bytes_per_s"]
    check(bw > 1e8, f"measured bandwidth {bw / 1e9:.2f} GB/s")
    frac = j["tg_tps"] / (bw / j["bytes_per_token"]) if bw > 0 else -1
    check(abs(frac - j["roofline_fraction"]) <= 1e-4 + 1e-3 * frac,
          f"roofline_fraction {j['roofline_fraction']} = tg / (bandwidth / bytes) = {frac:.4f}")
    wbw = j["weights_bandwidth_bytes_per_s"]
    check(wbw > 1e8, f"in-place weights bandwidth {wbw / 1e9:.2f} GB/s")
    wfrac = j["tg_tps"] / (wbw / j["bytes_per_token"]) if wbw > 0 else -1
    check(abs(wfrac - j["weights_roofline_fraction"]) <= 1e-4 + 1e-3 * wfrac,
          f"weights_roofline_fraction {j['weights_roofline_fraction']} = tg / (weights bandwidth / bytes) = "
          f"{wfrac:.4f}")
    line = re.search(r"^reading a token's weights in place: ([0-9.]+) GB/s -> ([0-9.]+) tokens/s; tg is ([0-9.]+)% "
                     r"of it$", out, re.M)
    check(line is not None and abs(float(line.group(1)) - wbw / 1e9) < 0.006,
          "text in-place line carries the JSON's weights bandwidth")

    # 4: the ISA override and bad arguments.
    rc, out, err = bench(a.mixtral, a.model, ["-p", "4", "-n", "2", "-r", "1", "--json", "--no-bandwidth"],
                         env={"MIXTRAL_ISA": "scalar"})
    check(rc == 0 and json.loads(out.strip().splitlines()[-1])["isa"] == "scalar", "MIXTRAL_ISA=scalar reported")
    rc, out, err = bench(a.mixtral, a.model, ["-p", "4", "-n", "2", "-r", "0", "--no-bandwidth"])
    check(rc != 0 and "-r" in err, f"-r 0 fails naming -r (exit {rc}: {err.strip()[:120]})")
    rc, out, err = bench(a.mixtral, a.model, ["-p", "4", "-n", "2", "-r", "1", "-c", "2", "--no-bandwidth"])
    check(rc != 0 and "--ctx-size" in err, f"a prompt beyond -c fails naming --ctx-size (exit {rc}: "
          f"{err.strip()[:120]})")

    # 5: -d (llama-bench's depth): the tests run after that many cached positions, and the context must hold
    # depth + tokens.
    rc, out, err = bench(a.mixtral, a.model, ["-p", "4", "-n", "2", "-d", "40", "-r", "1", "--json",
                                              "--no-bandwidth"])
    j = json.loads(out.strip().splitlines()[-1]) if rc == 0 else {}
    check(j.get("n_depth") == 40 and j.get("pp_tps", 0) > 0 and j.get("tg_tps", 0) > 0,
          f"-d 40: n_depth in the JSON and both rates (exit {rc}: {err.strip()[:120]})")
    check(re.search(r"^pp4 @ d40: [0-9.]+ tokens/s$", out, re.M) is not None and
          re.search(r"^tg2 @ d40: [0-9.]+ tokens/s$", out, re.M) is not None, "text lines say @ d40")
    rc, out, err = bench(a.mixtral, a.model, ["-p", "4", "-n", "2", "-d", "40", "-r", "1", "-c", "43",
                                              "--no-bandwidth"])
    check(rc == 2 and "--ctx-size" in err, f"-d 40 -p 4 beyond -c 43 fails naming --ctx-size (exit {rc})")
    rc, out, err = bench(a.mixtral, a.model, ["-d", "-1", "--no-bandwidth"])
    check(rc == 2 and "-d" in err, f"-d -1 fails naming -d (exit {rc})")

    # 6: --parallel, after a depth of 3 and a prompt of 5 (each sequence's decode starts at position 8).
    rc, out, err = bench(a.mixtral, a.model, ["-p", "5", "-n", "6", "-d", "3", "-r", "2", "-t", "1", "--json",
                                              "--no-bandwidth", "--parallel", "1,3"])
    check(rc == 0, f"--parallel 1,3 exits 0 (stderr: {err.strip()[:200]})")
    j = json.loads(out.strip().splitlines()[-1]) if rc == 0 else {}
    par = j.get("parallel", [])
    check([p.get("n_parallel") for p in par] == [1, 3], f"parallel array for 1 then 3: {par}")
    check(j.get("pp_tps", 0) > 0 and j.get("tg_tps", 0) > 0, "--parallel keeps the solo pp and tg tests")
    flops = sum(expected_decode_flops(a.model, 8 + i) for i in range(6)) / 6
    for p in par:
        n = p["n_parallel"]
        for key in ("n_past", "tokens_per_s", "per_sequence_tokens_per_s", "ms_per_step", "flops_per_step",
                    "gflops", "tokens_per_s_reps"):
            check(key in p, f"x{n}: JSON has {key}")
        check(p["n_past"] == 8, f"x{n}: n_past {p['n_past']} = -d 3 + -p 5")
        check(p["tokens_per_s"] > 0 and p["ms_per_step"] > 0, f"x{n}: rates positive: {p['tokens_per_s']}")
        reps = p["tokens_per_s_reps"]
        check(len(reps) == 2 and min(reps) - 0.01 <= p["tokens_per_s"] <= max(reps) + 0.01,
              f"x{n}: 2 reps {reps} bracket the aggregate {p['tokens_per_s']:.2f}")
        check(abs(p["per_sequence_tokens_per_s"] * n - p["tokens_per_s"]) <= 1e-3 * p["tokens_per_s"],
              f"x{n}: per-sequence rate x {n} = aggregate")
        check(abs(n * 1000 / p["ms_per_step"] - p["tokens_per_s"]) <= 1e-4 * p["tokens_per_s"],
              f"x{n}: {n} tokens per step / ms_per_step = aggregate tokens/s")
        check(abs(p["flops_per_step"] - n * flops) <= 1e-9 * n * flops,
              f"x{n}: flops_per_step {p['flops_per_step']:.0f} = {n * flops:.0f} counted from the tensor shapes")
        check(abs(p["gflops"] - p["flops_per_step"] / p["ms_per_step"] / 1e6) <= 1e-4 * p["gflops"],
              f"x{n}: gflops = flops_per_step / step time")
        tag = f"tg6 x{n} @ d8"
        line = re.search(r"^" + re.escape(tag) + r": ([0-9.]+) tokens/s aggregate \(([0-9.]+) per sequence\), "
                         r"([0-9.]+) ms/step, ([0-9.]+) GFLOP/s$", out, re.M)
        check(line is not None and abs(float(line.group(1)) - p["tokens_per_s"]) < 0.006 and
              abs(float(line.group(2)) - p["per_sequence_tokens_per_s"]) < 0.006 and
              abs(float(line.group(3)) - p["ms_per_step"]) < 0.006 and abs(float(line.group(4)) - p["gflops"]) < 0.06,
              f"text '{tag}' line carries the JSON's rates")
        line = re.search(r"^" + re.escape(tag) + r" per rep: ([0-9.]+), ([0-9.]+)$", out, re.M)
        check(line is not None and all(abs(float(line.group(i + 1)) - reps[i]) < 0.006 for i in range(2)),
              f"text '{tag} per rep' line equals tokens_per_s_reps")
    for bad in ("0", "-1", "abc", "2,,4", "3,x", "1e9999"):
        rc, out, err = bench(a.mixtral, a.model, ["-n", "2", "-r", "1", "--no-bandwidth", "--parallel=" + bad])
        check(rc == 2 and "--parallel" in err and len(err.strip().splitlines()) == 1,
              f"--parallel {bad} fails with one line naming --parallel (exit {rc}: {err.strip()[:120]})")
    rc, out, err = bench(a.mixtral, a.model, ["-n", "2", "-r", "1", "--no-bandwidth", "--parallel", "10000000000"])
    check(rc == 2 and "--parallel" in err and "available" in err,
          f"--parallel beyond the memory fails naming --parallel (exit {rc}: {err.strip()[:160]})")
    rc, out, err = bench(a.mixtral, a.model, ["-p", "4", "-n", "0", "-r", "1", "--no-bandwidth", "--parallel", "2"])
    check(rc == 2 and "-n" in err, f"--parallel with -n 0 fails naming -n (exit {rc}: {err.strip()[:120]})")
    rc, out, err = bench(a.mixtral, a.model, ["-p", "4", "-n", "4", "-c", "7", "-r", "1", "--no-bandwidth",
                                              "--parallel", "2"])
    check(rc == 2 and "--ctx-size" in err, f"--parallel with -p 4 -n 4 beyond -c 7 fails naming --ctx-size "
          f"(exit {rc}: {err.strip()[:120]})")

    if FAILURES:
        sys.exit(f"{len(FAILURES)} check(s) failed")
    print("all bench checks passed")


if __name__ == "__main__":
    main()
