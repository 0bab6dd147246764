#!/usr/bin/python3
"""`mixtral make-test-model`: what it writes, read back with the reference's own parsers
(tests/reference/reference.py), and how it refuses bad specs.

  * every layout and type holds the same weights: HF f16/bf16 are the f32 values rounded, GGUF
    Q8_0/Q4_0 dequantise to within half a quantisation step of them, consolidated and GGUF q/k rows
    are the HF rows permuted to interleaved order, merged GGUF experts are the HF experts stacked;
  * the configs (config.json, params.json, GGUF metadata and tokenizer) carry what the brief says;
  * norms and the router stay F32 in GGUF; the sharded index maps every tensor, total_size is right;
  * the same seed writes the same bytes, another seed other weights;
  * bad specs: exit status 2 and a one-line error naming the field;
  * --vocab-format v3: Mistral's v3 control pieces at mistral-common's ids ([INST] 3 .. [/TOOL_RESULTS] 9,
    type control) before the bytes, in the GGUF metadata and in the tokenizer.model (HF) and
    tokenizer.model.v3 (consolidated) written beside the weights (read with a protobuf reader of its own);
    every layout's tokenizer builds the mistral-v3 chat prompt and parses the tool control tokens.
"""
import argparse
import filecmp
import json
import os
import shutil
import subprocess
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "reference"))
import reference  # noqa: E402

FAILURES = []
SPEC = ["--dim", "64", "--ffn", "96", "--layers", "2", "--heads", "4", "--kv-heads", "2", "--head-dim", "16",
        "--experts", "4", "--top-k", "2", "--vocab", "270", "--seed", "7"]
TYPES = ["f32", "f16", "bf16", "q8_0", "q4_0"]
LAYOUTS = ["hf", "hf-sharded", "consolidated", "gguf-merged", "gguf-legacy"]


def spec_with(**overrides):
    """SPEC with some options replaced (CLI11 refuses an option given twice): key dim -> --dim."""
    args = list(SPEC)
    for k, v in overrides.items():
        opt = "--" + k.replace("_", "-")
        if opt in args:
            args[args.index(opt) + 1] = str(v)
        else:
            args += [opt, str(v)]
    return args


def check(ok, what):
    print(("ok   " if ok else "FAIL ") + what, flush=True)
    if not ok:
        FAILURES.append(what)


def run(mixtral, args):
    return subprocess.run([mixtral] + args, capture_output=True, text=True, timeout=120)


def make(mixtral, out, extra=()):
    shutil.rmtree(out, ignore_errors=True)
    p = run(mixtral, ["make-test-model", out] + SPEC + list(extra) +
            ["--types", ",".join(TYPES), "--layouts", ",".join(LAYOUTS)])
    if p.returncode != 0:
        raise RuntimeError(f"make-test-model failed ({p.returncode}): {p.stderr.strip()}")


def st_tensors(path):
    return reference._st_read(path)


def bf16_round(a):
    """float32 values rounded to bfloat16 (nearest even on the top 16 bits), as float64."""
    u = a.astype(np.float32).view(np.uint32).astype(np.uint64)
    u = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16) << 16
    return u.astype(np.uint32).view(np.float32).astype(np.float64)


def permute_interleaved(w, heads, hd):
    """HF rotate-half rows -> interleaved rows (the inverse of reference.unpermute_interleaved)."""
    return w.reshape(heads, 2, hd // 2, w.shape[1]).transpose(0, 2, 1, 3).reshape(w.shape)


def check_files(out):
    hf = st_tensors(os.path.join(out, "hf-f32", "model.safetensors"))
    L, E, dim, ffn, H, KV, hd, V = 2, 4, 64, 96, 4, 2, 16, 270

    # Distributions: linear std 1/sqrt(in), norms 1 +- 0.1, embeddings std 1, router std 3/sqrt(dim).
    def std_close(name, want):
        s = hf[name].std()
        check(abs(s / want - 1) < 0.1, f"hf-f32 {name}: std {s:.4f}, expected {want:.4f}")

    std_close("model.embed_tokens.weight", 1.0)
    std_close("model.layers.0.self_attn.q_proj.weight", dim ** -0.5)
    std_close("model.layers.1.block_sparse_moe.experts.3.w2.weight", ffn ** -0.5)
    std_close("model.layers.0.block_sparse_moe.gate.weight", 3 * dim ** -0.5)
    std_close("lm_head.weight", dim ** -0.5)
    nw = hf["model.layers.1.input_layernorm.weight"]
    check(np.all(np.abs(nw - 1) <= 0.1) and nw.std() > 0.01, "hf-f32 norm weights in 1 +- 0.1")
    check(len({float(hf[n].ravel()[0]) for n in hf}) == len(hf), "hf-f32: every tensor has its own values")

    # HF config and tensors.
    with open(os.path.join(out, "hf-f32", "config.json")) as f:
        cfg = json.load(f)
    want = {"architectures": ["MixtralForCausalLM"], "model_type": "mixtral", "hidden_size": dim,
            "intermediate_size": ffn, "num_hidden_layers": L, "num_attention_heads": H, "num_key_value_heads": KV,
            "head_dim": hd, "rms_norm_eps": 1e-5, "rope_theta": 1e6, "num_local_experts": E,
            "num_experts_per_tok": 2, "vocab_size": V, "max_position_embeddings": 4096, "sliding_window": None,
            "tie_word_embeddings": False, "torch_dtype": "float32", "bos_token_id": 1, "eos_token_id": 2}
    bad = {k: (cfg.get(k, "<missing>"), v) for k, v in want.items() if cfg.get(k, "<missing>") != v}
    check(not bad, f"hf-f32/config.json fields{': got/expected ' + str(bad) if bad else ''}")
    check(len(hf) == 1 + L * (7 + 3 * E) + 2, f"hf-f32: {len(hf)} tensors")
    check(hf["model.layers.0.self_attn.k_proj.weight"].shape == (KV * hd, dim)
          and hf["model.layers.0.self_attn.o_proj.weight"].shape == (dim, H * hd)
          and hf["model.layers.1.block_sparse_moe.experts.2.w2.weight"].shape == (dim, ffn)
          and hf["model.layers.1.block_sparse_moe.gate.weight"].shape == (E, dim), "hf-f32 shapes")

    for t, tol_name in (("f16", "float16"), ("bf16", "bfloat16")):
        with open(os.path.join(out, f"hf-{t}", "config.json")) as f:
            check(json.load(f)["torch_dtype"] == tol_name, f"hf-{t}/config.json torch_dtype {tol_name}")
        other = st_tensors(os.path.join(out, f"hf-{t}", "model.safetensors"))
        if t == "f16":
            same = all(np.array_equal(other[n], hf[n].astype(np.float16).astype(np.float64)) for n in hf)
        else:
            same = all(np.array_equal(other[n], bf16_round(hf[n])) for n in hf)
        check(same, f"hf-{t}: every tensor is hf-f32 rounded to {t}")

    # Sharded: 3 shards, index covering every tensor, total_size the data bytes.
    d = os.path.join(out, "hf-f32-sharded")
    with open(os.path.join(d, "model.safetensors.index.json")) as f:
        idx = json.load(f)
    files = sorted(set(idx["weight_map"].values()))
    check(files == [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)], f"hf-f32-sharded files {files}")
    shards = {fn: st_tensors(os.path.join(d, fn)) for fn in files}
    mapped_right = all(n in shards[fn] for n, fn in idx["weight_map"].items())
    check(mapped_right and set(idx["weight_map"]) == set(hf) and all(len(s) for s in shards.values()),
          "hf-f32-sharded: index maps every tensor to the shard that holds it, no shard empty")
    total = sum(a.size * 4 for a in hf.values())
    check(idx["metadata"]["total_size"] == total, f"index total_size {idx['metadata']['total_size']} == {total}")
    check(all(np.array_equal(shards[idx["weight_map"][n]][n], hf[n]) for n in hf), "hf-f32-sharded == hf-f32")

    # Consolidated: names, params.json, q/k permuted.
    with open(os.path.join(out, "consolidated-f32", "params.json")) as f:
        p = json.load(f)
    want = {"dim": dim, "n_layers": L, "head_dim": hd, "hidden_dim": ffn, "n_heads": H, "n_kv_heads": KV,
            "norm_eps": 1e-5, "vocab_size": V, "rope_theta": 1e6, "moe": {"num_experts": E, "num_experts_per_tok": 2}}
    bad = {k: (p.get(k, "<missing>"), v) for k, v in want.items() if p.get(k, "<missing>") != v}
    check(not bad and "sliding_window" not in p, f"consolidated-f32/params.json{': ' + str(bad) if bad else ''}")
    c = st_tensors(os.path.join(out, "consolidated-f32", "consolidated.safetensors"))
    ok = (np.array_equal(c["layers.1.attention.wq.weight"],
                         permute_interleaved(hf["model.layers.1.self_attn.q_proj.weight"], H, hd))
          and np.array_equal(c["layers.1.attention.wk.weight"],
                             permute_interleaved(hf["model.layers.1.self_attn.k_proj.weight"], KV, hd))
          and not np.array_equal(c["layers.1.attention.wq.weight"], hf["model.layers.1.self_attn.q_proj.weight"])
          and np.array_equal(c["layers.1.attention.wv.weight"], hf["model.layers.1.self_attn.v_proj.weight"])
          and np.array_equal(c["layers.0.feed_forward.experts.3.w2.weight"],
                             hf["model.layers.0.block_sparse_moe.experts.3.w2.weight"])
          and np.array_equal(c["output.weight"], hf["lm_head.weight"]))
    check(ok, "consolidated-f32: wq/wk are the HF rows permuted to interleaved order, the rest as HF")
    check(len(c) == len(hf), f"consolidated-f32: {len(c)} tensors")

    # GGUF: metadata, tokenizer, types, permutation, experts.
    for layout in ("gguf-merged", "gguf-legacy"):
        for t in TYPES:
            path = os.path.join(out, f"{layout}-{t}.gguf")
            meta, g, types = reference.gguf_read(path)
            ft = {"f32": 0, "f16": 1, "q4_0": 2, "q8_0": 7, "bf16": 32}[t]
            ggml = {"f32": 0, "f16": 1, "q4_0": 2, "q8_0": 8, "bf16": 30}[t]
            want = {"general.architecture": "llama", "general.name": "mixtral-test", "general.alignment": 32,
                    "general.file_type": ft, "llama.context_length": 4096, "llama.embedding_length": dim,
                    "llama.block_count": L, "llama.feed_forward_length": ffn, "llama.attention.head_count": H,
                    "llama.attention.head_count_kv": KV, "llama.attention.key_length": hd,
                    "llama.attention.value_length": hd, "llama.rope.dimension_count": hd,
                    "llama.expert_count": E, "llama.expert_used_count": 2, "llama.vocab_size": V,
                    "tokenizer.ggml.model": "llama", "tokenizer.ggml.bos_token_id": 1,
                    "tokenizer.ggml.eos_token_id": 2, "tokenizer.ggml.unknown_token_id": 0,
                    "tokenizer.ggml.add_bos_token": True, "tokenizer.ggml.add_eos_token": False}
            bad = {k: (meta.get(k, "<missing>"), v) for k, v in want.items() if meta.get(k, "<missing>") != v}
            bad.update({k: meta.get(k) for k in ("llama.rope.freq_base", "llama.attention.layer_norm_rms_epsilon")
                        if k not in meta})
            if abs(meta.get("llama.rope.freq_base", 0) - 1e6) > 1 or \
                    abs(meta.get("llama.attention.layer_norm_rms_epsilon", 0) - 1e-5) > 1e-9:
                bad["rope/eps"] = "wrong"
            if "llama.attention.sliding_window" in meta:
                bad["llama.attention.sliding_window"] = "present without a window"
            check(not bad, f"{layout}-{t}: metadata{': ' + str(bad) if bad else ''}")
            toks, scores, tt = (meta["tokenizer.ggml.tokens"], meta["tokenizer.ggml.scores"],
                                meta["tokenizer.ggml.token_type"])
            vocab_ok = (len(toks) == V == len(scores) == len(tt) and toks[:3] == ["<unk>", "<s>", "</s>"]
                        and toks[3] == "<0x00>" and toks[258] == "<0xFF>" and len(set(toks)) == V
                        and all(toks) and tt[:3] == [2, 3, 3] and set(tt[3:259]) == {6} and set(tt[259:]) == {1}
                        and scores[:259] == [0.0] * 259 and scores[259:] == [-float(i) for i in range(V - 259)])
            check(vocab_ok, f"{layout}-{t}: tokenizer tokens, scores and token types")
            f32_names = [n for n in g if n.endswith("norm.weight") or n.endswith("ffn_gate_inp.weight")]
            check(len(f32_names) == 2 * L + 1 + L and all(types[n] == 0 for n in f32_names)
                  and all(types[n] == ggml for n in g if n not in f32_names),
                  f"{layout}-{t}: norms and router F32, every other tensor {t}")
            check(("output.weight" in g) and len(g) == (1 + L * (7 + (3 if layout == "gguf-merged" else 3 * E)) + 2),
                  f"{layout}-{t}: {len(g)} tensors")
            # Values: exact for f32, rounded for f16/bf16, within half a step for q8_0/q4_0.
            q = g["blk.1.attn_q.weight"]
            want_q = permute_interleaved(hf["model.layers.1.self_attn.q_proj.weight"], H, hd)
            if layout == "gguf-merged":
                w2 = g["blk.0.ffn_down_exps.weight"][3]
                w3 = g["blk.1.ffn_up_exps.weight"][1]
            else:
                w2, w3 = g["blk.0.ffn_down.3.weight"], g["blk.1.ffn_up.1.weight"]
            # Norms and router: the f32 values exactly. The rest: f32 exact, f16/bf16 the f32 values
            # rounded, q8_0/q4_0 within a quantisation step relative to the block's max |x| (q8_0 half
            # a step of max/127; q4_0 a whole step of max/8, as GGML maps the extreme to -8), plus the
            # fp16 rounding of the block scale.
            exact = [(g["blk.0.ffn_gate_inp.weight"], hf["model.layers.0.block_sparse_moe.gate.weight"]),
                     (g["output_norm.weight"], hf["model.norm.weight"]),
                     (g["blk.1.attn_norm.weight"], hf["model.layers.1.input_layernorm.weight"])]
            typed = [(q, want_q), (w2, hf["model.layers.0.block_sparse_moe.experts.3.w2.weight"]),
                     (w3, hf["model.layers.1.block_sparse_moe.experts.1.w3.weight"]),
                     (g["token_embd.weight"], hf["model.embed_tokens.weight"]),
                     (g["output.weight"], hf["lm_head.weight"])]
            check(all(np.array_equal(a, b) for a, b in exact), f"{layout}-{t}: norms and router are the f32 values")
            rel = {"q8_0": 0.5 / 127 + 1e-3, "q4_0": 1 / 8 + 1e-3}.get(t, 0.0)
            worst = 0.0
            for got, ref in typed:
                if t in ("f32", "f16", "bf16"):
                    want_t = {"f32": lambda a: a, "f16": lambda a: a.astype(np.float16).astype(np.float64),
                              "bf16": bf16_round}[t](ref)
                    worst = max(worst, float(np.abs(got - want_t).max()))
                else:
                    blocks = ref.reshape(-1, 32)
                    err = np.abs(got.reshape(blocks.shape) - blocks)
                    worst = max(worst, float((err / np.abs(blocks).max(axis=1, keepdims=True)).max()))
            check(worst <= rel, f"{layout}-{t}: values are the HF values (q/k permuted) in {t}: "
                                f"max error {worst:.3g} (bound {rel:.3g})")


def check_determinism(mixtral, out):
    again = out + "-again"
    make(mixtral, again)
    names = ["hf-f32/model.safetensors", "consolidated-bf16/consolidated.safetensors", "gguf-merged-q4_0.gguf",
             "gguf-legacy-q8_0.gguf", "hf-f16-sharded/model-00002-of-00003.safetensors"]
    same = [n for n in names if filecmp.cmp(os.path.join(out, n), os.path.join(again, n), shallow=False)]
    check(same == names, f"the same seed writes the same bytes ({len(same)}/{len(names)} files identical)")
    shutil.rmtree(again, ignore_errors=True)
    p = run(mixtral, ["make-test-model", again] + spec_with(seed=8, types="f32", layouts="hf"))
    a = st_tensors(os.path.join(out, "hf-f32", "model.safetensors"))
    b = st_tensors(os.path.join(again, "hf-f32", "model.safetensors")) if p.returncode == 0 else {}
    check(b and all(not np.array_equal(a[n], b[n]) for n in a), "another seed writes other weights")
    shutil.rmtree(again, ignore_errors=True)


def check_variants(mixtral, out):
    d = out + "-variants"
    shutil.rmtree(d, ignore_errors=True)
    p = run(mixtral, ["make-test-model", d, "--tie-embeddings"] +
            spec_with(sliding_window=5, types="bf16", layouts="hf,consolidated,gguf-merged"))
    check(p.returncode == 0, f"sliding window + tied embeddings: exit {p.returncode} {p.stderr.strip()}")
    if p.returncode != 0:
        return
    with open(os.path.join(d, "hf-bf16", "config.json")) as f:
        cfg = json.load(f)
    hf = st_tensors(os.path.join(d, "hf-bf16", "model.safetensors"))
    check(cfg["sliding_window"] == 5 and cfg["tie_word_embeddings"] is True and "lm_head.weight" not in hf,
          "hf: sliding_window 5, tie_word_embeddings true, no lm_head.weight")
    with open(os.path.join(d, "consolidated-bf16", "params.json")) as f:
        check(json.load(f).get("sliding_window") == 5, "params.json: sliding_window 5")
    meta, g, _ = reference.gguf_read(os.path.join(d, "gguf-merged-bf16.gguf"))
    check(meta.get("llama.attention.sliding_window") == 5 and "output.weight" not in g,
          "gguf: llama.attention.sliding_window 5, no output.weight")
    shutil.rmtree(d, ignore_errors=True)


V3_CONTROLS = ["[INST]", "[/INST]", "[TOOL_CALLS]", "[AVAILABLE_TOOLS]", "[/AVAILABLE_TOOLS]", "[TOOL_RESULTS]",
               "[/TOOL_RESULTS]"]


def pb_fields(buf):
    """Protocol-buffer message -> [(field, value)]: varints as ints, fixed32 as float, bytes as bytes."""
    out, i = [], 0

    def varint():
        nonlocal i
        v = shift = 0
        while True:
            b = buf[i]
            i += 1
            v |= (b & 0x7F) << shift
            shift += 7
            if b < 0x80:
                return v
    while i < len(buf):
        tag = varint()
        field, wire = tag >> 3, tag & 7
        if wire == 0:
            v = varint()
            out.append((field, v - (1 << 64) if v >= 1 << 63 else v))
        elif wire == 2:
            n = varint()
            out.append((field, bytes(buf[i:i + n])))
            i += n
        elif wire == 5:
            out.append((field, float(np.frombuffer(buf[i:i + 4], dtype="<f4")[0])))
            i += 4
        else:
            raise ValueError(f"wire type {wire}")
    return out


def read_sp_model(path):
    """tokenizer.model -> (pieces, scores, types, trainer {field: value}, normalizer {field: value})."""
    pieces, scores, types, trainer, norm = [], [], [], {}, {}
    with open(path, "rb") as f:
        for field, v in pb_fields(f.read()):
            if field == 1:
                d = dict(pb_fields(v))
                pieces.append(d[1].decode())
                scores.append(d.get(2, 0.0))
                types.append(d.get(3, 1))
            elif field == 2:
                trainer = dict(pb_fields(v))
            elif field == 3:
                norm = dict(pb_fields(v))
    return pieces, scores, types, trainer, norm


def check_v3(mixtral, out):
    d = out + "-v3"
    shutil.rmtree(d, ignore_errors=True)
    p = run(mixtral, ["make-test-model", d] + spec_with(types="f32,q8_0", layouts="hf,hf-sharded,consolidated,gguf-merged",
                                                       vocab_format="v3"))
    check(p.returncode == 0, f"--vocab-format v3: exit {p.returncode} {p.stderr.strip()}")
    if p.returncode != 0:
        return
    V, first = 270, 3 + len(V3_CONTROLS) + 256  # SPEC's vocab; the first normal piece
    meta, _, _ = reference.gguf_read(os.path.join(d, "gguf-merged-q8_0.gguf"))
    toks, scores, tt = (meta["tokenizer.ggml.tokens"], meta["tokenizer.ggml.scores"], meta["tokenizer.ggml.token_type"])
    ok = (len(toks) == len(scores) == len(tt) == V and toks[:10] == ["<unk>", "<s>", "</s>"] + V3_CONTROLS
          and tt[:10] == [2] + [3] * 9 and toks[10] == "<0x00>" and toks[265] == "<0xFF>" and set(tt[10:266]) == {6}
          and set(tt[266:]) == {1} and toks[266:270] == ["\u2581a", "a", "\u2581b", "b"]
          and scores == [0.0] * first + [-float(i) for i in range(V - first)]
          and meta["tokenizer.ggml.bos_token_id"] == 1 and meta["tokenizer.ggml.eos_token_id"] == 2)
    check(ok, "v3 gguf: control pieces [INST]..[/TOOL_RESULTS] at ids 3..9 (type control), bytes at 10..265")
    for rel in ("hf-f32/tokenizer.model", "hf-f32-sharded/tokenizer.model", "consolidated-f32/tokenizer.model.v3"):
        path = os.path.join(d, rel)
        if not os.path.exists(path):
            check(False, f"v3: {rel} written")
            continue
        pieces, sc, ty, trainer, norm = read_sp_model(path)
        ok = (pieces == toks and sc == scores and ty == tt and trainer.get(3) == 2 and trainer.get(35) == 1
              and (trainer.get(40), trainer.get(41), trainer.get(42)) == (0, 1, 2) and norm.get(1) == b"identity"
              and norm.get(3) == 1)
        check(ok, f"v3 {rel}: the GGUF vocabulary as a SentencePiece BPE model (byte fallback, identity, dummy prefix)")
        try:  # the SentencePiece library itself, where this Python has it (Debian's python3-sentencepiece)
            import sentencepiece
        except ImportError:
            continue
        sp = sentencepiece.SentencePieceProcessor(model_file=path)
        check(sp.vocab_size() == V and all(sp.is_control(i) for i in range(1, 10)) and sp.encode("ab") == [266, 269]
              and sp.encode("x") == [10 + 0xE2, 10 + 0x96, 10 + 0x81, 10 + ord("x")],
              f"v3 {rel}: SentencePiece loads it (control ids 1..9, 'ab' -> 266 269, byte fallback)")
    check(not os.path.exists(os.path.join(d, "hf-q8_0")), "v3: no HF directory for q8_0")
    check(not any(os.path.exists(os.path.join(out, r)) for r in ("hf-f32/tokenizer.model",
                                                                  "consolidated-f32/tokenizer.model.v3")),
          "v1 (the default): no tokenizer files beside the HF and consolidated weights")
    chat = os.path.join(d, "chat.json")
    with open(chat, "w") as f:
        json.dump({"messages": [{"role": "user", "content": "ab"}]}, f)
    special = "[TOOL_CALLS][AVAILABLE_TOOLS][/AVAILABLE_TOOLS][TOOL_RESULTS][/TOOL_RESULTS][/INST]"
    for rel in ("gguf-merged-q8_0.gguf", "hf-f32", "hf-f32-sharded", "consolidated-f32"):
        m = os.path.join(d, rel)
        a = run(mixtral, ["tokenize", "-m", m, "--chat", chat])
        b = run(mixtral, ["tokenize", "-m", m, "--special", "--text", special])
        c = run(mixtral, ["tokenize", "-m", m, "--text", "[INST]"])
        ids = [json.loads(x.stdout) if x.returncode == 0 else x.stderr.strip() for x in (a, b, c)]
        # mistral-v3 layout <s>[INST]▁ab[/INST]: "▁a" 266, "b" 269; without --special "[INST]" is plain text.
        check(ids[0] == [1, 3, 266, 269, 4] and ids[1] == [1, 5, 6, 7, 8, 9, 4] and isinstance(ids[2], list)
              and 3 not in ids[2] and len(ids[2]) > 2,
              f"v3 {rel}: chat prompt {ids[0]} (mistral-v3), control tokens {ids[1]}, plain '[INST]' {ids[2]}")
    shutil.rmtree(d, ignore_errors=True)


def check_errors(mixtral, out):
    cases = [  # options replaced in SPEC, words the one-line error must contain
        (dict(dim=100, types="q8_0"), ["dim 100", "32"]),
        (dict(ffn=100, types="q4_0"), ["ffn 100", "32"]),
        (dict(heads=4, kv_heads=3), ["kv-heads 3"]),
        (dict(top_k=5), ["top-k 5"]),
        (dict(top_k=0), ["top-k 0"]),
        (dict(vocab=100), ["vocab 100"]),
        (dict(head_dim=15), ["head-dim 15"]),
        (dict(layers=0), ["layers 0"]),
        (dict(experts=0), ["experts 0"]),
        (dict(layouts="pytorch"), ["layout", "pytorch"]),
        (dict(types="q8_1"), ["type", "q8_1"]),
        (dict(types="q4_k"), ["dim 64", "256", "q4_k"]),  # K-quant rows are whole 256-element blocks
        (dict(types="q8_0", layouts="consolidated"), ["consolidated", "float"]),
        (dict(sliding_window=-1), ["sliding-window -1"]),
        (dict(vocab=268, vocab_format="v3"), ["vocab 268", "269"]),
        (dict(vocab_format="v2"), ["vocab-format", "v2"]),
    ]
    for overrides, words in cases:
        p = run(mixtral, ["make-test-model", out + "-bad"] + spec_with(**{"types": "f32", "layouts": "hf", **overrides}))
        lines = [l for l in p.stderr.strip().splitlines() if l]
        ok = p.returncode == 2 and len(lines) == 1 and all(w in lines[0] for w in words)
        check(ok, f"make-test-model {overrides}: exit {p.returncode}, error {lines}")
    shutil.rmtree(out + "-bad", ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mixtral", required=True)
    ap.add_argument("--workdir", required=True)
    a = ap.parse_args()
    out = os.path.join(a.workdir, "small")
    try:
        make(a.mixtral, out)
        check_files(out)
        check_determinism(a.mixtral, out)
        check_variants(a.mixtral, out)
        check_v3(a.mixtral, out)
        check_errors(a.mixtral, out)
    except (RuntimeError, subprocess.TimeoutExpired, KeyError, OSError) as e:
        check(False, f"{type(e).__name__}: {e}")
    if FAILURES:
        print(f"\n{len(FAILURES)} failure(s):\n  " + "\n  ".join(FAILURES))
        return 1
    print("all passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
