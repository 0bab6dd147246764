#!/usr/bin/python3
"""KV cache types and the sampling flags of the CLI, on the built-in model (models/tiny-kjv.gguf).

1. `--cache-type f32|f16|q8_0` on run, score, perplexity, bench, chat, route and info: each type generates
   text; a bad name exits 2 with one line naming --cache-type. `info` prints the KV bytes per token of every
   type, counted here from the GGUF's hyper-parameters.
2. `run --min-p --repeat-penalty --presence-penalty --frequency-penalty --logit-bias`: bad values exit 2 naming
   the flag; greedy output under penalties and a bias equals the argmax of `score`'s logits with the same
   penalties applied here in NumPy, step by step; --logit-bias ID=100 forces ID; --min-p 1 at temperature 1
   is greedy.
3. `perplexity --kl-divergence-base / --kl-divergence`: f32 against f32 (at 2 threads against 1) is exactly 0
   with the same top token everywhere; f16 and q8_0 against f32 are small and positive; files for another text or --ctx are refused
   with one line naming the file.
4. `chat --verbose`: from turn 2 on, the cached conversation is reused: the previous prompt and answer.

  test_cache_type.py --mixtral BIN --model models/tiny-kjv.gguf --workdir DIR
"""
import argparse
import json
import os
import re
import subprocess
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tests", "reference"))
import reference  # noqa: E402

FAILURES = []
TYPES = ("f32", "f16", "q8_0")
PROMPT = "And God said"
# Genesis 1:1-8 (KJV), enough for a few windows of --ctx 64.
TEXT = ("In the beginning God created the heaven and the earth. And the earth was without form, and void; and "
        "darkness was upon the face of the deep. And the Spirit of God moved upon the face of the waters. And "
        "God said, Let there be light: and there was light. And God saw the light, that it was good: and God "
        "divided the light from the darkness. And God called the light Day, and the darkness he called Night. "
        "And the evening and the morning were the first day. And God said, Let there be a firmament in the "
        "midst of the waters, and let it divide the waters from the waters. And God made the firmament, and "
        "divided the waters which were under the firmament from the waters which were above the firmament: "
        "and it was so. And God called the firmament Heaven. And the evening and the morning were the second "
        "day.\n")


def check(ok, what):
    print(("ok   " if ok else "FAIL ") + what)
    if not ok:
        FAILURES.append(what)


def mx(a, args, stdin=None):
    r = subprocess.run([a.mixtral] + args, capture_output=True, text=True, input=stdin, timeout=300)
    return r.returncode, r.stdout, r.stderr


def expect_usage(a, args, flag):
    rc, _, err = mx(a, args)
    lines = [l for l in err.splitlines() if l.strip()]
    check(rc == 2 and len(lines) == 1 and flag in err,
          f"{' '.join(args[:1] + args[-2:])}: exit 2, one line naming {flag} (exit {rc}: {err.strip()[:160]})")


def run_ids(a, extra):
    rc, out, err = mx(a, ["run", "--model", a.model, "-p", PROMPT, "--ids", "-t", "1"] + extra)
    if rc != 0:
        check(False, f"run {' '.join(extra)} exits 0 (stderr: {err.strip()[:200]})")
        return []
    return json.loads(out.strip().splitlines()[-1])


def penalised_greedy(logits, history_prompt, generated, rep, pres, freq, bias):
    """The next greedy token from one row of logits under the penalties, in float64."""
    w = logits.astype(np.float64).copy()
    for t, b in bias.items():
        w[t] += b
    for t in set(history_prompt) | set(generated):
        w[t] = w[t] / rep if w[t] > 0 else w[t] * rep
    for t in set(generated):
        w[t] -= pres + freq * generated.count(t)
    return w


def test_run_and_flags(a):
    # Every cache type and command accepts the flag; each type writes text.
    for t in TYPES:
        rc, out, err = mx(a, ["run", "--model", a.model, "-p", PROMPT, "-n", "12", "--temp", "0", "-t", "1",
                              "--cache-type", t])
        check(rc == 0 and len(out.strip()) > 0, f"run --cache-type {t} writes text: {out.strip()[:60]!r}")
    for cmd in (["run", "-p", PROMPT], ["score", "--tokens", "1,2,3"], ["perplexity", "--text-file", "x"],
                ["bench"], ["chat"], ["route", "-p", PROMPT, "--html", "x.html"], ["info"]):
        expect_usage(a, cmd[:1] + ["--model", a.model] + cmd[1:] + ["--cache-type", "q4_0"], "--cache-type")
    for flag, value in (("--min-p", "1.5"), ("--min-p", "-0.1"), ("--repeat-penalty", "0"),
                        ("--presence-penalty", "2.5"), ("--frequency-penalty", "-3"), ("--logit-bias", "5"),
                        ("--logit-bias", "x=1"), ("--logit-bias", "5=200"), ("--logit-bias", "5=1x"),
                        ("--logit-bias", "4096=1")):
        expect_usage(a, ["run", "--model", a.model, "-p", PROMPT, "-n", "2", flag, value], flag)

    # Greedy with penalties and a bias against score's logits, penalised here step by step.
    rc, out, err = mx(a, ["tokenize", "--model", a.model, "--text", PROMPT])
    prompt = json.loads(out)
    rep, pres, freq, bias = 1.3, 0.4, 0.3, {262: 1.5, 264: -2.0}
    n = 10
    gen = run_ids(a, ["-n", str(n), "--temp", "0", "--repeat-penalty", str(rep), "--presence-penalty", str(pres),
                      "--frequency-penalty", str(freq)] +
                  [x for t, b in bias.items() for x in ("--logit-bias", f"{t}={b}")] + ["--cache-type", "f32"])
    plain = run_ids(a, ["-n", str(n), "--temp", "0", "--cache-type", "f32"])
    check(len(gen) == n, f"penalised greedy run gives {n} tokens: {gen}")
    logits_path = os.path.join(a.workdir, "pen_logits.npy")
    rc, _, err = mx(a, ["score", "--model", a.model, "--tokens", ",".join(map(str, prompt + gen)),
                        "--logits-out", logits_path, "--cache-type", "f32", "-t", "1"])
    check(rc == 0, f"score of the penalised continuation (stderr: {err.strip()[:200]})")
    L = np.load(logits_path)
    agree = 0
    for i, tok in enumerate(gen):
        w = penalised_greedy(L[len(prompt) + i - 1], prompt, gen[:i], rep, pres, freq, bias)
        agree += int(w[tok] >= w.max() - 1e-3)  # score's prefill may differ from decode in the last bits
    check(agree == len(gen), f"each penalised greedy token is the argmax of the penalised logits ({agree}/{len(gen)})")
    check(gen != plain, f"the penalties change the greedy output ({gen} vs {plain})")

    forced = run_ids(a, ["-n", "5", "--temp", "0", "--logit-bias", "5=0", "--logit-bias", "300=100"])
    check(forced == [300] * 5, f"--logit-bias 300=100 (the second of two) forces token 300: {forced}")
    banned = run_ids(a, ["-n", "5", "--temp", "0", "--logit-bias", f"{plain[0]}=-100"])
    check(len(banned) > 0 and plain[0] not in banned, f"--logit-bias {plain[0]}=-100 bans it: {banned}")
    minp = run_ids(a, ["-n", str(n), "--temp", "1", "--top-k", "0", "--top-p", "1", "--min-p", "1", "--seed", "7",
                       "--cache-type", "f32"])
    check(minp == plain, f"--min-p 1 at --temp 1 is greedy ({minp} vs {plain})")


def test_info(a):
    with open(a.model, "rb") as f:
        meta, _, _ = reference.gguf_header(f.read(), a.model)
    arch = meta["general.architecture"]
    layers, kv_heads = meta[f"{arch}.block_count"], meta[f"{arch}.attention.head_count_kv"]
    head_dim = meta[f"{arch}.embedding_length"] // meta[f"{arch}.attention.head_count"]
    row = kv_heads * head_dim  # K (or V) elements of one position in one layer
    want = {"f32": 2 * layers * row * 4, "f16": 2 * layers * row * 2, "q8_0": 2 * layers * row // 32 * 34}
    for t in TYPES:
        rc, out, err = mx(a, ["info", "--model", a.model, "--cache-type", t, "--ctx", "1000"])
        m = re.search(r"KV cache bytes per token: f32 (\d+), f16 (\d+), q8_0 (\d+)", out)
        check(rc == 0 and m is not None and
              tuple(map(int, m.groups())) == (want["f32"], want["f16"], want["q8_0"]),
              f"info --cache-type {t}: bytes per token {m.groups() if m else None}, want {want}")
        m = re.search(r"\+ KV cache (\d+) bytes \((\w+)\)", out)
        check(m is not None and int(m.group(1)) == 1000 * want[t] and m.group(2) == t,
              f"info --cache-type {t}: the context's KV line says {m.group(0) if m else None}")


def perplexity(a, extra, stride=32, threads=1):
    rc, out, err = mx(a, ["perplexity", "--model", a.model, "--text-file", a.text, "--ctx", "64", "--stride",
                          str(stride), "-t", str(threads), "--json"] + extra)
    if rc != 0:
        return rc, None, err
    return rc, json.loads(out.strip().splitlines()[-1]), err


def test_kl_divergence(a):
    base = os.path.join(a.workdir, "base-f32.logp")
    rc, j, err = perplexity(a, ["--cache-type", "f32", "--kl-divergence-base", base])
    check(rc == 0, f"perplexity --kl-divergence-base writes {base} (stderr: {err.strip()[:200]})")
    if rc != 0:
        return
    scored = j["tokens_scored"]
    check(os.path.getsize(base) == 40 + scored * 4 + scored * 4096 * 4, "the base file holds header, targets, rows")
    for t in TYPES:
        # f32 at 2 threads against the base at 1: the logits do not depend on the thread count.
        rc, k, err = perplexity(a, ["--cache-type", t, "--kl-divergence", base], threads=2 if t == "f32" else 1)
        check(rc == 0, f"perplexity --cache-type {t} --kl-divergence (stderr: {err.strip()[:200]})")
        if rc != 0:
            continue
        print(f"     {t}: ppl {k['perplexity']:.4f} (base {k['base_perplexity']:.4f}), KLD {k['kld_mean']:.3g} "
              f"+/- {k['kld_stderr']:.2g}, max {k['kld_max']:.3g}, same top {k['same_top_pct']:.2f}%")
        check(abs(k["base_perplexity"] - j["perplexity"]) < 1e-4 * j["perplexity"],
              f"{t}: the base file's perplexity is the f32 run's")
        if t == "f32":
            check(k["kld_mean"] == 0 and k["kld_max"] == 0 and k["same_top_pct"] == 100 and
                  k["perplexity"] == j["perplexity"],
                  "f32 against f32 (2 threads against 1): KLD exactly 0, same top token everywhere")
        else:
            check(0 < k["kld_mean"] < 5e-3 and k["kld_max"] < 0.1 and k["same_top_pct"] > 90,
                  f"{t} against f32: KLD small and positive ({k['kld_mean']:.3g}, max {k['kld_max']:.3g})")
    # Windows without overlap: each window's first token goes unscored, and the file holds what was scored.
    disjoint = os.path.join(a.workdir, "disjoint-f32.logp")
    rc, j2, err = perplexity(a, ["--cache-type", "f32", "--kl-divergence-base", disjoint], stride=64)
    rc2, k2, err2 = perplexity(a, ["--cache-type", "f32", "--kl-divergence", disjoint], stride=64)
    check(rc == 0 and rc2 == 0 and j2["tokens_scored"] == j2["tokens"] - j2["windows"] and k2["kld_max"] == 0,
          f"--stride = --ctx: {j2 and j2['tokens_scored']} positions written and read back, KLD 0 ({err}{err2})")
    # Refusals: another --ctx, another text, not a base file.
    for extra, what in ((["--ctx", "32", "--stride", "16"], "another --ctx"),):
        rc, out, err = mx(a, ["perplexity", "--model", a.model, "--text-file", a.text, "--kl-divergence", base] + extra)
        check(rc == 1 and base in err and len(err.strip().splitlines()) == 1,
              f"{what}: exit 1, one line naming the file ({err.strip()[:160]})")
    other = os.path.join(a.workdir, "other.txt")
    with open(other, "w") as f:
        f.write(TEXT.replace("God", "the LORD"))
    rc, out, err = mx(a, ["perplexity", "--model", a.model, "--text-file", other, "--ctx", "64", "--stride", "32",
                          "--kl-divergence", base])
    check(rc == 1 and base in err and len(err.strip().splitlines()) == 1,
          f"another text: exit 1, one line naming the file ({err.strip()[:160]})")
    rc, out, err = mx(a, ["perplexity", "--model", a.model, "--text-file", a.text, "--ctx", "64", "--stride", "32",
                          "--kl-divergence", a.text])
    check(rc == 1 and a.text in err and len(err.strip().splitlines()) == 1,
          f"not a base file: exit 1, one line naming it ({err.strip()[:160]})")


def test_chat(a):
    turns = ["Who made the heaven?", "And the earth?", "What was upon the deep?", "Who moved upon the waters?",
             "What did God say?"]
    rc, out, err = mx(a, ["chat", "--model", a.model, "--verbose", "-n", "12", "--temp", "0", "-t", "1", "-c", "1024",
                          "--cache-type", "q8_0"], stdin="\n".join(turns) + "\n")
    stats = [tuple(map(int, m)) for m in re.findall(
        r"\[turn (\d+): prompt (\d+) tokens: (\d+) reused from the cache, (\d+) computed; "
        r"first token after [0-9.]+ ms; (\d+) tokens", err)]
    check(rc == 0 and len(stats) == len(turns), f"chat --verbose reports every turn ({len(stats)}; exit {rc})")
    # The previous prompt and answer stay cached, all but the answer's last token (sampled, never fed).
    for (turn, n, reused, computed, _), prev in zip(stats[1:], stats):
        want = prev[1] + prev[4] - 1
        check(reused + computed == n and reused >= want and computed > 0,
              f"chat turn {turn}: {reused} of {n} prompt tokens reused (at least {want})")
    for line in err.splitlines():
        if line.startswith("[turn"):
            print("     " + line)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mixtral", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--workdir", required=True)
    a = ap.parse_args()
    os.makedirs(a.workdir, exist_ok=True)
    a.text = os.path.join(a.workdir, "genesis.txt")
    with open(a.text, "w") as f:
        f.write(TEXT)
    test_run_and_flags(a)
    test_info(a)
    test_kl_divergence(a)
    test_chat(a)
    if FAILURES:
        print(f"{len(FAILURES)} failure(s)")
        sys.exit(1)
    print("all passed")


if __name__ == "__main__":
    main()
