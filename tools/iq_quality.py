#!/usr/bin/python3
"""Quality of the i-quant mixes on the built-in model (models/tiny-kjv.gguf, F16): per TYPE, quantized with
and without an importance matrix, the KL divergence of its next-token distributions from the F16 model's and
its perplexity, on the model's held-out text (the last five books of the KJV, never seen in training).

  tools/iq_quality.py --mixtral build/release/apps/cli/mixtral [--workdir DIR] [--types IQ2_XS,IQ3_M]
                      [--lock /tmp/cpu.lock] [--threads 2] [--llama-quantize PATH]

Steps (each cached in WORKDIR, so an interrupted run resumes where it stopped):
  1. the corpus: tools/train_tiny/corpus.py (Debian's bible-kjv-text; the training split and the held-out
     split, as the model was trained);
  2. the importance matrix: `mixtral imatrix` on the first --imatrix-chars characters of the training split
     (chunks of --ctx tokens);
  3. the base: `mixtral perplexity --kl-divergence-base` of the F16 model on the held-out text;
  4. per TYPE and variant: `mixtral quantize` (with --imatrix; without), then `mixtral perplexity
     --kl-divergence` against the base. With --llama-quantize PATH, llama.cpp's llama-quantize makes the
     files instead (same model, mix, importance matrices), still measured by `mixtral perplexity`; those
     results are keyed "llama/TYPE/variant" and printed as their own table, so one results.json holds both.
Every perplexity run: --ctx 256 --stride 128 (models/README.md's held-out figures) and an f32 KV cache, so
only the weights differ from the base. The TYPEs that llama.cpp (and `mixtral quantize`) refuse without an
importance matrix get a "flat" one instead for the second variant: every column's importance 1 (a legacy
.dat file), i.e. no column preferred; the others are quantized with none. With --lock FILE the imatrix,
the base and runs of TYPEs (both variants, 15-40 s each on the built-in model; no TYPE starts after 40 s)
hold an exclusive flock on FILE (the shared machine's CPU lock), so no hold lasts much over 90 s.

Writes WORKDIR/results.json and prints a Markdown table.
"""
import argparse
import fcntl
import json
import os
import struct
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "reference"))
import reference  # noqa: E402  (GGUF reader, for the flat importance matrix)

IQ_TYPES = ["IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ2_M", "IQ3_XXS", "IQ3_XS", "IQ3_S", "IQ3_M",
            "IQ4_XS", "IQ4_NL"]
# For scale: K-quant mixes and Q8_0, measured the same way.
REFERENCE_TYPES = ["Q8_0", "Q4_K_M", "Q3_K_M", "Q2_K"]
# llama.cpp's tensor_requires_imatrix holds for some tensor of these mixes (on this model's shapes).
NEEDS_IMATRIX = {"IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ2_M", "IQ3_XXS", "IQ3_XS"}
PPL_ARGS = ["--ctx", "256", "--stride", "128", "--cache-type", "f32"]


class Lock:
    def __init__(self, path):
        self.path, self.f = path, None

    def __enter__(self):
        if self.path:
            self.f = open(self.path, "a")
            fcntl.flock(self.f, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        if self.f:
            fcntl.flock(self.f, fcntl.LOCK_UN)
            self.f.close()


def run(args, lock):
    with Lock(lock):
        t = time.time()
        p = subprocess.run(args, capture_output=True, text=True)
        dt = time.time() - t
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(args[:2])} ... exit {p.returncode}: {p.stderr.strip()[-500:]}")
    print(f"  {os.path.basename(args[0])} {args[1]} ... {dt:.1f} s", flush=True)
    return p.stdout


def flat_imatrix(src, dst):
    """A legacy .dat with src's entries (names, sizes) and every value 1 (ncall 1): no column preferred."""
    raw = open(src, "rb").read()
    _, infos, _ = reference.gguf_header(raw, src)
    out = bytearray()
    entries = [(n[:-len(".in_sum2")], ne) for n, ne, _, _ in infos if n.endswith(".in_sum2")]
    out += struct.pack("<i", len(entries))
    for name, ne in entries:
        nval = 1
        for d in ne:
            nval *= d
        nb = name.encode()
        out += struct.pack("<i", len(nb)) + nb + struct.pack("<ii", 1, nval) + struct.pack(f"<{nval}f", *[1.0] * nval)
    open(dst, "wb").write(bytes(out))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mixtral", required=True)
    ap.add_argument("--model", default=os.path.join(ROOT, "models", "tiny-kjv.gguf"))
    ap.add_argument("--workdir", default="/tmp/iq_quality")
    ap.add_argument("--types", default=",".join(IQ_TYPES + REFERENCE_TYPES))
    ap.add_argument("--imatrix-chars", type=int, default=400_000, help="training text for the imatrix")
    ap.add_argument("--ctx", type=int, default=256, help="imatrix chunk length")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--lock", default="", help="hold an exclusive flock on this file during each step")
    ap.add_argument("--llama-quantize", default="", help="quantize with this llama-quantize binary instead")
    a = ap.parse_args()
    w = a.workdir
    os.makedirs(w, exist_ok=True)
    results_path = os.path.join(w, "results.json")
    results = json.load(open(results_path)) if os.path.exists(results_path) else {}
    M, T = a.mixtral, ["--threads", str(a.threads)]

    corpus = os.path.join(w, "corpus")
    if not os.path.exists(os.path.join(corpus, "heldout.txt")):
        subprocess.run([sys.executable, os.path.join(ROOT, "tools", "train_tiny", "corpus.py"), corpus], check=True,
                       capture_output=True)
    heldout = os.path.join(corpus, "heldout.txt")
    train = os.path.join(w, "imatrix-text.txt")
    if not os.path.exists(train):
        open(train, "w", encoding="utf-8").write(
            open(os.path.join(corpus, "train.txt"), encoding="utf-8").read()[:a.imatrix_chars])
    imatrix = os.path.join(w, "imatrix.gguf")
    if not os.path.exists(imatrix):
        run([M, "imatrix", "--model", a.model, "--text-file", train, "--ctx", str(a.ctx), "-o", imatrix] + T, a.lock)
    flat = os.path.join(w, "imatrix-flat.dat")
    if not os.path.exists(flat):
        flat_imatrix(imatrix, flat)
    base = os.path.join(w, "base-f16.bin")
    if "F16" not in results or not os.path.exists(base):
        out = run([M, "perplexity", "-m", a.model, "--text-file", heldout, "--kl-divergence-base", base, "--json"]
                  + PPL_ARGS + T, a.lock)
        results["F16"] = {"perplexity": json.loads(out)["perplexity"], "bytes": os.path.getsize(a.model)}
        json.dump(results, open(results_path, "w"), indent=1)

    todo = a.types.split(",")
    while todo:
        with Lock(a.lock):  # TYPEs (both variants, ~15 s each here) until the hold nears a minute
            start = time.time()
            while todo and time.time() - start < 40:
                tname = todo.pop(0)
                measure(a, tname, "flat" if tname in NEEDS_IMATRIX else "none", imatrix, flat, heldout, base,
                        results, results_path)
    print_table(results, a.types.split(","), "llama/" if a.llama_quantize else "")


def measure(a, tname, no, imatrix, flat, heldout, base, results, results_path):
    """Both variants of one TYPE (the caller holds the lock)."""
    w, M, T = a.workdir, a.mixtral, ["--threads", str(a.threads)]
    prefix = "llama/" if a.llama_quantize else ""
    for variant in ("imatrix", no):
        key = f"{prefix}{tname}/{variant}"
        if key in results:
            continue
        path = os.path.join(w, f"{tname}-{variant}.gguf")
        extra = {"imatrix": ["--imatrix", imatrix], "flat": ["--imatrix", flat], "none": []}[variant]
        if tname == "Q8_0" and variant == "imatrix":
            continue  # Q8_0 weighs nothing by an importance matrix (quantize refuses one)
        t = time.time()
        if a.llama_quantize:
            run([a.llama_quantize] + extra + [a.model, path, tname, str(a.threads)], "")
        else:
            run([M, "quantize", a.model, path, tname] + extra + T, "")
        quantize_s = time.time() - t
        out = json.loads(run([M, "perplexity", "-m", path, "--text-file", heldout, "--kl-divergence", base,
                              "--json"] + PPL_ARGS + T, ""))
        results[key] = {"perplexity": out["perplexity"], "kld_mean": out["kld_mean"],
                        "kld_stderr": out["kld_stderr"], "same_top_pct": out["same_top_pct"],
                        "bytes": os.path.getsize(path), "tokens_scored": out["tokens_scored"],
                        "quantize_s": quantize_s}
        os.remove(path)
        json.dump(results, open(results_path, "w"), indent=1)


def print_table(results, types, prefix):
    f16 = results["F16"]
    print(f"\nF16 base: perplexity {f16['perplexity']:.3f}, {f16['bytes'] / 1e6:.2f} MB")
    print(f"{'llama-quantize' if prefix else 'mixtral quantize'}'s files\n")
    print("| TYPE | MB | imatrix: KL mean | PPL | same top % | without: | KL mean | PPL | same top % |")
    print("|---|---|---|---|---|---|---|---|---|")
    for t in types:
        row = [t]
        mb = None
        cells = []
        for variant in ("imatrix", "flat" if t in NEEDS_IMATRIX else "none"):
            r = results.get(f"{prefix}{t}/{variant}")
            if r is None:
                cells += ["—", "—", "—"] if variant == "imatrix" else [variant, "—", "—", "—"]
                continue
            mb = r["bytes"] / 1e6
            c = [f"{r['kld_mean']:.3g} ± {r['kld_stderr']:.2g}", f"{r['perplexity']:.2f}", f"{r['same_top_pct']:.1f}"]
            cells += c if variant == "imatrix" else [variant] + c
        row += [f"{mb:.2f}" if mb else "—"] + cells
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
