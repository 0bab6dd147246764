#!/usr/bin/python3
"""Expert parallelism under mpirun against the same binary in one process (the reference: the one-process
forward is itself checked against NumPy and llama.cpp elsewhere).

1. Logits: `score --logits-out` under `mpirun -np 2, 3, 4` equal to one process's bit for bit, for f32,
   q8_0, q4_0 and q4_k (quantized by `mixtral quantize`), merged and legacy GGUF, Hugging Face and
   consolidated directories; -np 10 and 16 (more ranks than the 8 experts: each cut in 2 parts by rows) on
   q8_0 merged and q4_0 legacy; once more with the TCP transport forced (--mca btl tcp,self).
2. Greedy decode (`run --temp 0 --ids`), `perplexity`, `chat` (two turns) and `route` identical.
3. Memory: under `mpirun -np 2 serve --no-repack`, each rank's resident pages of the model file's mapping
   (/proc/PID/smaps) hold the shared weights and about half of the experts, and one process all of them.
4. Faults: a rank killed mid-run ends the job within seconds, non-zero, naming the rank (mpirun's line); a
   rank that stops answering ends it after MIXTRAL_MPI_TIMEOUT seconds with our one line; a model file
   missing for one rank (a relative path, each rank in its own directory) is reported naming that rank and
   its host; `info --ranks` and imatrix's refusal.
5. `serve` under mpirun answering the openai client (tests/server/mpi_serve_test.mjs): 4 concurrent
   streams, the same completions as one process.

The routing of the random test models is whatever it is: this test needs no margin, since every rank computes
the router from the same bits and the experts' outputs are exchanged, not recomputed.

  test_mpi.py --mixtral BIN --workdir DIR --node NODE
"""
import argparse
import os
import shutil
import signal
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOKENS = "1,5,9,33,100,7,8,9,200,301,17,44,3,250,511,60"
failures = []


def check(cond, what):
    print(("ok   " if cond else "FAIL ") + what, flush=True)
    if not cond:
        failures.append(what)


def env():
    e = dict(os.environ)
    if os.getuid() == 0:  # CI runs as root; Open MPI refuses it unless told
        e.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    e.setdefault("OMPI_MCA_rmaps_base_oversubscribe", "1")
    return e


def mpirun(np_, *args, tcp=False):
    cmd = ["mpirun", "--oversubscribe", "-np", str(np_)]
    if tcp:
        cmd += ["--mca", "btl", "tcp,self"]
    return cmd + list(args)


def run(cmd, expect=0, timeout=120):
    r = subprocess.run(cmd, capture_output=True, text=True, env=env(), timeout=timeout)
    if r.returncode != expect:
        sys.exit(f"FAIL: {' '.join(cmd)} -> exit {r.returncode} (expected {expect}): {r.stderr.strip()[-800:]}")
    return r


def same_bytes(a, b):
    with open(a, "rb") as fa, open(b, "rb") as fb:
        return fa.read() == fb.read()


def rank_pids(mpirun_pid, n):
    """{rank: pid} of mpirun's ranks (its children carry OMPI_COMM_WORLD_RANK)."""
    out = {}
    for _ in range(200):
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                with open(f"/proc/{pid}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                if ppid != mpirun_pid:
                    continue
                with open(f"/proc/{pid}/environ", "rb") as f:
                    for kv in f.read().split(b"\0"):
                        if kv.startswith(b"OMPI_COMM_WORLD_RANK="):
                            out[int(kv.split(b"=")[1])] = int(pid)
            except (OSError, ValueError, IndexError):
                continue
        if len(out) == n:
            return out
        time.sleep(0.05)
    sys.exit(f"FAIL: found ranks {out} of mpirun {mpirun_pid}, expected {n}")


def mapped_rss(pid, path):
    """Resident bytes of pid's mappings of file path (/proc/PID/smaps)."""
    real = os.path.realpath(path)
    total, inside = 0, False
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            head = line.split()
            if head and "-" in head[0] and len(head) >= 5 and not head[0].endswith(":"):
                inside = len(head) >= 6 and os.path.realpath(head[-1]) == real
            elif inside and line.startswith("Rss:"):
                total += int(line.split()[1]) * 1024
    return total


def logits_cases(mx, work):
    small = os.path.join(work, "small")
    if not os.path.isdir(small):
        run([mx, "make-test-model", small, "--dim", "256", "--ffn", "512", "--layers", "3", "--heads", "8",
             "--kv-heads", "2", "--experts", "8", "--top-k", "2", "--vocab", "512", "--types", "f32,f16,q8_0,q4_0",
             "--layouts", "gguf-merged,gguf-legacy,hf,consolidated", "--threads", "2"])
        run([mx, "quantize", os.path.join(small, "gguf-merged-f32.gguf"), os.path.join(small, "q4_k.gguf"),
             "Q4_K", "--pure"])
    models = [os.path.join(small, f) for f in ("gguf-merged-f32.gguf", "gguf-merged-q8_0.gguf",
                                               "gguf-legacy-q4_0.gguf", "q4_k.gguf", "hf-f16", "consolidated-f16")]
    for m in models:
        name = os.path.basename(m)
        one = os.path.join(work, "one.npy")
        run([mx, "score", "--model", m, "--tokens", TOKENS, "--logits-out", one, "--threads", "1"])
        for np_ in (2, 3, 4):
            many = os.path.join(work, f"many{np_}.npy")
            run(mpirun(np_, mx, "score", "--model", m, "--tokens", TOKENS, "--logits-out", many, "--threads", "1"))
            check(same_bytes(one, many), f"{name}: logits under mpirun -np {np_} bitwise equal to one process")
        if name in ("gguf-merged-q8_0.gguf", "gguf-legacy-q4_0.gguf"):  # more ranks than experts: parts by rows
            for np_ in (10, 16):
                many = os.path.join(work, f"many{np_}.npy")
                run(mpirun(np_, mx, "score", "--model", m, "--tokens", TOKENS, "--logits-out", many, "--threads",
                           "1"))
                check(same_bytes(one, many), f"{name}: logits under mpirun -np {np_} (experts cut in 2 parts) "
                      "bitwise equal to one process")
        many = os.path.join(work, "tcp.npy")
        run(mpirun(3, mx, "score", "--model", m, "--tokens", TOKENS, "--logits-out", many, "--threads", "1",
                   tcp=True))
        check(same_bytes(one, many), f"{name}: logits under mpirun -np 3 --mca btl tcp,self bitwise equal")
    return small


def decode_cases(mx, small, work):
    m = os.path.join(small, "gguf-merged-q8_0.gguf")
    gen = [mx, "run", "--model", m, "--prompt-tokens", "1,5,9,33", "-n", "40", "--temp", "0", "--ids",
           "--threads", "1"]
    one = run(gen).stdout.strip().splitlines()[-1]
    for np_, tcp in ((2, False), (4, False), (2, True)):
        many = run(mpirun(np_, *gen, tcp=tcp)).stdout.strip().splitlines()[-1]
        check(one == many and len(one) > 40, f"greedy decode under mpirun -np {np_}{' (tcp)' if tcp else ''}: "
              f"the same ids ({many[:40]}...)")
    # chat (the conversation kept in the KV cache between turns) and route (the routing of every layer).
    chat = [mx, "chat", "--model", m, "-n", "16", "--temp", "0", "--threads", "1"]
    turns = "In the beginning\nand the earth\n"
    one = subprocess.run(chat, input=turns, capture_output=True, text=True, env=env(), timeout=120).stdout
    many = subprocess.run(mpirun(2, *chat), input=turns, capture_output=True, text=True, env=env(),
                          timeout=120).stdout
    check(one == many and len(one) > 10, "chat under mpirun -np 2: the same two turns")
    pages = []
    for np_ in (1, 3):
        page = os.path.join(work, f"route{np_}.html")
        cmd = [mx, "route", "--model", m, "--prompt", "In the beginning God created", "--html", page]
        run(mpirun(np_, *cmd) if np_ > 1 else cmd)
        pages.append(open(page, "rb").read())
    check(pages[0] == pages[1], "route under mpirun -np 3: the same page")
    text = os.path.join(work, "text.txt")
    with open(text, "w") as f:
        f.write("In the beginning God created the heaven and the earth. And the earth was without form, "
                "and void; and darkness was upon the face of the deep.\n")
    ppl = [mx, "perplexity", "--model", m, "--text-file", text, "--ctx", "16", "--threads", "1"]
    one = run(ppl).stdout
    many = run(mpirun(3, *ppl)).stdout
    check(one == many and "perplexity" in one, "perplexity under mpirun -np 3: the same report")


def memory_case(mx, work):
    """Rss of the model file mapping per rank with --no-repack (the weights read where they lie)."""
    d = os.path.join(work, "mem")
    if not os.path.isdir(d):
        run([mx, "make-test-model", d, "--dim", "512", "--ffn", "1024", "--layers", "2", "--heads", "8",
             "--kv-heads", "2", "--experts", "8", "--top-k", "2", "--vocab", "512", "--types", "f32",
             "--layouts", "gguf-merged", "--threads", "2"])
    m = os.path.join(d, "gguf-merged-f32.gguf")
    size = os.path.getsize(m)
    experts = 2 * 8 * 3 * 512 * 1024 * 4
    shared = size - experts
    import json
    import urllib.request
    prompt = " ".join(f"w{i}" for i in range(120))  # enough tokens that every expert is chosen somewhere

    def measure(np_):
        port = 18000 + os.getpid() % 1000 + np_
        cmd = [mx, "serve", "--model", m, "--port", str(port), "--threads", "1", "--no-repack"]
        p = subprocess.Popen(mpirun(np_, *cmd) if np_ > 1 else cmd, env=env(), stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE)
        try:
            for _ in range(400):
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
                    break
                except OSError:
                    time.sleep(0.05)
            body = json.dumps({"prompt": prompt, "max_tokens": 8, "temperature": 0}).encode()
            req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/completions", body,
                                         {"content-type": "application/json"})
            json.load(urllib.request.urlopen(req, timeout=60))
            pids = rank_pids(p.pid, np_) if np_ > 1 else {0: p.pid}
            return [mapped_rss(pids[r], m) for r in range(np_)]
        finally:
            p.send_signal(signal.SIGINT)
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()

    one = measure(1)[0]
    check(abs(one - size) < 0.05 * size, f"one process: {one} resident bytes of the {size}-byte file")
    ranks = measure(2)
    for r, rss in enumerate(ranks):
        want = shared + experts / 2
        check(abs(rss - want) < 0.1 * want,
              f"mpirun -np 2: rank {r} holds {rss} resident bytes of the file (shared {shared} + half the "
              f"experts {experts // 2} = {int(want)})")


def fault_cases(mx, small, work):
    big = os.path.join(work, "mem", "gguf-merged-f32.gguf")  # slow enough to be killed mid-run
    p = subprocess.Popen(mpirun(2, mx, "run", "--model", big, "--prompt-tokens", "1,5,9", "-n", "4000",
                                "--temp", "1", "--threads", "1", "--ctx-size", "4096"),
                         env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    check(p.stdout.read(1) != b"", "a long run under mpirun -np 2 has begun")
    pids = rank_pids(p.pid, 2)
    os.kill(pids[1], signal.SIGKILL)
    t0 = time.time()
    try:
        err = p.communicate(timeout=30)[1].decode(errors="replace")
    except subprocess.TimeoutExpired:
        p.kill()
        err = "(hung)"
    dt = time.time() - t0
    check(p.returncode not in (0, None) and dt < 10 and "rank 1" in err,
          f"rank 1 killed mid-run: the job ended in {dt:.1f} s with exit {p.returncode}, naming rank 1: "
          f"{[l for l in err.splitlines() if 'rank 1' in l][:1]}")

    # A rank that stops answering (SIGSTOP: alive, silent, like a host or link gone without a reset): the
    # exchange's deadline (MIXTRAL_MPI_TIMEOUT, 3 s here) ends the job with our one line.
    e = env()
    e["MIXTRAL_MPI_TIMEOUT"] = "3"
    p = subprocess.Popen(["mpirun", "--oversubscribe", "-x", "MIXTRAL_MPI_TIMEOUT", "-np", "2", mx, "run", "--model",
                          big, "--prompt-tokens", "1,5,9", "-n", "4000", "--temp", "1", "--threads", "1",
                          "--ctx-size", "4096"], env=e, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    check(p.stdout.read(1) != b"", "a long run under mpirun -np 2 has begun")
    os.kill(rank_pids(p.pid, 2)[1], signal.SIGSTOP)
    t0 = time.time()
    try:
        err = p.communicate(timeout=60)[1].decode(errors="replace")
    except subprocess.TimeoutExpired:
        p.kill()
        err = "(hung)"
    dt = time.time() - t0
    ours = [l for l in err.splitlines() if l.startswith("mixtral:")]
    # (The stopped rank, resumed by mpirun to be killed, may find its own exchange late too and say so.)
    check(p.returncode not in (0, None) and dt < 15 and any(l.startswith("mixtral: rank 0 on ") for l in ours)
          and all("no answer" in l for l in ours),
          f"rank 1 stopped mid-run: the job ended in {dt:.1f} s with exit {p.returncode}, rank 0 saying: {ours}")

    # A file missing for rank 1 only: a relative path, rank 1 started in a directory without it.
    a, b = os.path.join(work, "dir_a"), os.path.join(work, "dir_b")
    os.makedirs(a, exist_ok=True)
    os.makedirs(b, exist_ok=True)
    shutil.copy(os.path.join(small, "gguf-merged-q8_0.gguf"), os.path.join(a, "model.gguf"))
    cmd = [mx, "score", "--model", "model.gguf", "--tokens", "1,2,3"]
    base = mpirun(1, "-wdir", a, *cmd)
    r = run(base + [":", "-np", "1", "-wdir", b] + cmd, expect=1)
    host = os.uname().nodename
    lines = [l for l in r.stderr.splitlines() if l.startswith("mixtral:")]
    check(len(lines) == 1 and f"rank 1 on {host}" in lines[0] and "model.gguf" in lines[0],
          f"a model missing on rank 1: one line naming the rank and its host: {lines}")

    m = os.path.join(small, "gguf-merged-f32.gguf")
    info = run([mx, "info", "--model", m, "--ranks", "3"]).stdout
    rank_lines = [l for l in info.splitlines() if l.startswith("rank ")]
    check(len(rank_lines) == 3 and all("experts" in l for l in rank_lines),
          f"info --ranks 3: a line per rank ({len(rank_lines)})")
    info = run([mx, "info", "--model", m, "--ranks", "12"]).stdout
    rank_lines = [l for l in info.splitlines() if l.startswith("rank ")]
    check(len(rank_lines) == 12 and "2 parts" in info and "/1" in rank_lines[1],
          f"info --ranks 12: experts in 2 parts, a line per rank ({len(rank_lines)})")
    r = run([mx, "info", "--model", m, "--ranks", "129"], expect=2)
    check("--ranks" in r.stderr, "info --ranks 129 (parts under 16 rows): a usage error naming --ranks")
    r = run(mpirun(2, mx, "imatrix", "--model", m, "--text-file", m, "-o", os.path.join(work, "x.gguf")),
            expect=2)
    check("mpirun" in r.stderr, "imatrix under mpirun: refused (it needs every expert in one process)")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mixtral", required=True)
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--node", default="node")
    a = ap.parse_args()
    os.makedirs(a.workdir, exist_ok=True)
    mx = os.path.abspath(a.mixtral)
    small = logits_cases(mx, a.workdir)
    decode_cases(mx, small, a.workdir)
    memory_case(mx, a.workdir)
    fault_cases(mx, small, a.workdir)
    r = subprocess.run([a.node, os.path.join(ROOT, "tests", "server", "mpi_serve_test.mjs"), "--mixtral", mx,
                        "--model", os.path.join(small, "gguf-merged-q8_0.gguf")], env=env())
    check(r.returncode == 0, "serve under mpirun -np 2 and 3: the openai client's 4 concurrent streams as one process")
    if failures:
        sys.exit(f"{len(failures)} failures")
    print("all passed")


if __name__ == "__main__":
    main()
