#!/usr/bin/python3
"""Routing introspection on the built-in model (models/tiny-kjv.gguf):

1. `mixtral score --routing-out` equals the routing of the independent float64 NumPy reference
   (tests/reference/reference.py) for every layer and token: the same two experts in the same order, weights
   within 1e-4. The prompt is one with a clear router top-2 margin everywhere (asserted: >= 2e-3 in logits).
2. `mixtral route --html --png` writes a page that headless Chromium renders with one token cell per layer and
   token, each cell carrying the same experts as the JSON, and a PNG screenshot.

  test_routing.py --mixtral BIN --model models/tiny-kjv.gguf --workdir DIR [--chromium chromium]
"""
import argparse
import json
import os
import re
import shutil
import struct
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
REFERENCE = os.path.join(ROOT, "tests", "reference", "reference.py")
PROMPT = "And God said, Let there be light: and there was light."
MIN_MARGIN = 2e-3


def run(cmd, **kw):
    r = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if r.returncode != 0:
        sys.exit(f"FAIL: {' '.join(cmd)} -> exit {r.returncode}: {r.stderr.strip()[:500]}")
    return r.stdout


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mixtral", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--chromium", default="chromium")
    a = ap.parse_args()
    shutil.rmtree(a.workdir, ignore_errors=True)
    os.makedirs(a.workdir)
    w = lambda name: os.path.join(a.workdir, name)  # noqa: E731

    ids = json.loads(run([a.mixtral, "tokenize", "--model", a.model, "--text", PROMPT]))
    tok_arg = ",".join(map(str, ids))
    run([a.mixtral, "score", "--model", a.model, "--tokens", tok_arg, "--routing-out", w("routing.json"),
         "--threads", "2", "--cache-type", "f32"])
    run([sys.executable, REFERENCE, "logits", "--model", a.model, "--tokens", tok_arg, "--out", w("ref.npy"),
         "--routing-out", w("ref.json")])
    with open(w("routing.json")) as f:
        ours = json.load(f)
    with open(w("ref.json")) as f:
        ref = json.load(f)
    assert ours["tokens"] == ids
    n, L = len(ids), ours["n_layers"]
    assert len(ours["routing"]) == len(ref) == n * L, (len(ours["routing"]), len(ref), n * L)
    key = lambda r: (r["layer"], r["pos"])  # noqa: E731
    ref_by = {key(r): r for r in ref}
    worst_w, min_margin = 0.0, min(r["margin"] for r in ref)
    assert min_margin >= MIN_MARGIN, f"the prompt has a router margin of {min_margin} < {MIN_MARGIN}"
    for r in ours["routing"]:
        q = ref_by[key(r)]
        assert r["experts"] == q["experts"], (key(r), r["experts"], q["experts"])
        worst_w = max(worst_w, max(abs(x - y) for x, y in zip(r["weights"], q["weights"])))
    assert worst_w < 1e-4, worst_w
    print(f"routing: {n} tokens x {L} layers equal the reference (min margin {min_margin:.4f}, "
          f"worst weight difference {worst_w:.2e})")

    # The page, rendered by headless Chromium.
    run([a.mixtral, "route", "--model", a.model, "--prompt", PROMPT, "--html", w("route.html"), "--png",
         w("route.png"), "--threads", "2", "--cache-type", "f32"], env=dict(os.environ, MIXTRAL_CHROMIUM=a.chromium))
    with open(w("route.html"), encoding="utf-8") as f:
        page = f.read()
    for bad in ("<script", "src=\"http", "href=\"http", "<link", "@import", "url("):
        assert bad not in page, f"the page is not self-contained: {bad}"
    prof = w("chromium-profile")
    dom = run(["timeout", "120", a.chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
               "--disable-background-networking", f"--user-data-dir={prof}", "--dump-dom",
               "file://" + os.path.abspath(w("route.html"))])
    cells = re.findall(r'<span class="tok" data-layer="(\d+)" data-pos="(\d+)" data-experts="([\d,]+)"', dom)
    assert len(cells) == n * L, f"rendered {len(cells)} token cells, expected {n * L}"
    ours_by = {key(r): r for r in ours["routing"]}
    for l, p, ex in cells:
        assert [int(e) for e in ex.split(",")] == ours_by[(int(l), int(p))]["experts"], (l, p, ex)
    assert len(re.findall(r"<svg class=\"hist\"", dom)) == L, "one load histogram per layer"
    with open(w("route.png"), "rb") as f:
        head = f.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    width, height = struct.unpack(">II", head[16:24])
    assert width > 100 and height > 100, (width, height)
    r = subprocess.run([a.mixtral, "route", "--model", a.model, "--prompt", PROMPT, "--html", w("x.html"), "--png",
                        w("x.png")], capture_output=True, text=True,
                       env=dict(os.environ, MIXTRAL_CHROMIUM=w("no-such-chromium")))
    assert r.returncode == 1 and "--png" in r.stderr and r.stderr.count("\n") == 1, (r.returncode, r.stderr)
    print(f"page: {len(cells)} token cells rendered by Chromium, {L} histograms, PNG {width}x{height}")
    print("PASS")
    return 0


if __name__ == "__main__":
    sys.exit(main())
