#!/usr/bin/env python3
"""Writes the seed corpora under corpus/{gguf,safetensors,json}/ (deterministic, a few KB in all).

Format facts used: GGUF is little-endian "GGUF", u32 version, u64 tensor count, u64 kv count, kv pairs
(u64-length string key, u32 value type, value), tensor infos (name, u32 n_dims, u64 ne[], u32 ggml type,
u64 offset), zero padding to the alignment, data. safetensors is a u64 header length, a JSON header of
{name: {dtype, shape, data_offsets}} plus "__metadata__", then the data.
"""
import json
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))

# GGUF value types.
U8, I8, U16, I16, U32, I32, F32, BOOL, STRING, ARRAY, U64, I64, F64 = range(13)
SCALAR_FMT = {U8: "<B", I8: "<b", U16: "<H", I16: "<h", U32: "<I", I32: "<i", F32: "<f", BOOL: "<?",
              U64: "<Q", I64: "<q", F64: "<d"}
# ggml type id -> (block size, bytes per block)
GGML = {0: (1, 4), 1: (1, 2), 2: (32, 18), 8: (32, 34), 12: (256, 144), 30: (1, 2)}


def gguf_str(s):
    b = s.encode()
    return struct.pack("<Q", len(b)) + b


def gguf_value(vtype, v):
    if vtype == STRING:
        return gguf_str(v)
    if vtype == ARRAY:
        etype, items = v
        return struct.pack("<IQ", etype, len(items)) + b"".join(gguf_value(etype, x) for x in items)
    return struct.pack(SCALAR_FMT[vtype], v)


def gguf(kv, tensors, version=3, alignment=32):
    """kv: [(key, type, value)]; tensors: [(name, ne innermost first, ggml type)]."""
    out = b"GGUF" + struct.pack("<IQQ", version, len(tensors), len(kv))
    for key, vtype, v in kv:
        out += gguf_str(key) + struct.pack("<I", vtype) + gguf_value(vtype, v)
    offset, datas = 0, []
    for i, (name, ne, gtype) in enumerate(tensors):
        block, block_bytes = GGML[gtype]
        numel = 1
        for n in ne:
            numel *= n
        nbytes = numel // block * block_bytes
        out += gguf_str(name) + struct.pack("<I", len(ne)) + b"".join(struct.pack("<Q", n) for n in ne)
        out += struct.pack("<IQ", gtype, offset)
        datas.append((offset, bytes((i * 31 + j * 7) & 0xFF for j in range(nbytes))))
        offset += (nbytes + alignment - 1) // alignment * alignment
    out += b"\0" * (-len(out) % alignment)
    data = bytearray(offset)
    for off, d in datas:
        data[off:off + len(d)] = d
    return out + bytes(data)


def safetensors(tensors, metadata=None):
    """tensors: [(name, dtype, shape)], laid out back to back in order."""
    sizes = {"F32": 4, "F16": 2, "BF16": 2, "I64": 8}
    header, data = {}, b""
    if metadata is not None:
        header["__metadata__"] = metadata
    for i, (name, dtype, shape) in enumerate(tensors):
        n = sizes[dtype]
        for d in shape:
            n *= d
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + n]}
        data += bytes((i * 13 + j) & 0xFF for j in range(n))
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + data


def gguf_seeds():
    tokens = (ARRAY, (STRING, ["<unk>", "<s>", "</s>", "\u2581the", "[INST]"]))
    return {
        "empty_v3.gguf": gguf([], []),
        "all_types_v2.gguf": gguf(
            [("u8", U8, 200), ("i8", I8, -5), ("u16", U16, 60000), ("i16", I16, -300), ("u32", U32, 7),
             ("i32", I32, -7), ("f32", F32, 0.5), ("bool", BOOL, True), ("str", STRING, "hello"),
             ("u64", U64, 1 << 40), ("i64", I64, -(1 << 40)), ("f64", F64, 1e-5),
             ("arr.i32", ARRAY, (I32, [1, -2, 3])), ("arr.f32", ARRAY, (F32, [0.0, -1.5])),
             ("arr.bool", ARRAY, (BOOL, [True, False])), ("arr.u64", ARRAY, (U64, [1, 2])),
             ("arr.empty", ARRAY, (STRING, []))],
            [("a", [3, 2], 0), ("b", [32, 1], 8)], version=2),
        "types_align64.gguf": gguf(
            [("general.alignment", U32, 64)],
            [("f16", [8], 1), ("bf16", [4, 2], 30), ("q4_0", [32, 2], 2), ("q4_k", [256], 12)], alignment=64),
        "mixtral_merged.gguf": gguf(
            [("general.architecture", STRING, "llama"), ("llama.block_count", U32, 1),
             ("llama.expert_count", U32, 2), ("llama.expert_used_count", U32, 2),
             ("llama.rope.freq_base", F32, 1e6), ("llama.attention.layer_norm_rms_epsilon", F32, 1e-5),
             ("tokenizer.ggml.tokens", *tokens), ("tokenizer.ggml.scores", ARRAY, (F32, [0.0] * 5))],
            [("token_embd.weight", [32, 5], 0), ("blk.0.ffn_gate_inp.weight", [32, 2], 0),
             ("blk.0.ffn_up_exps.weight", [32, 2, 2], 8), ("blk.0.attn_q.weight", [32, 32], 8)]),
        "mixtral_legacy.gguf": gguf(
            [("general.architecture", STRING, "llama"), ("llama.expert_count", U32, 2)],
            [("blk.0.ffn_gate.0.weight", [32, 2], 8), ("blk.0.ffn_gate.1.weight", [32, 2], 8),
             ("output_norm.weight", [32], 0)]),
        "scalar_tensor.gguf": gguf([], [("s", [], 0)]),
    }


def safetensors_seeds():
    return {
        "empty.safetensors": safetensors([]),
        "types.safetensors": safetensors([("w", "F32", [2, 3]), ("h", "F16", [5]), ("b", "BF16", [2, 2, 2])],
                                         {"format": "pt"}),
        "mixtral_hf.safetensors": safetensors(
            [("model.layers.0.block_sparse_moe.gate.weight", "BF16", [2, 8]),
             ("model.layers.0.block_sparse_moe.experts.0.w1.weight", "BF16", [4, 8]),
             ("model.layers.0.self_attn.q_proj.weight", "BF16", [8, 8]), ("model.norm.weight", "BF16", [8])],
            {"format": "pt"}),
        "scalar_and_4d.safetensors": safetensors([("s", "F32", []), ("t", "F16", [1, 2, 1, 3])]),
        "unsupported_dtype.safetensors": safetensors([("ids", "I64", [3])]),
    }


def json_seeds():
    hf = {"architectures": ["MixtralForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 1,
          "eos_token_id": 2, "hidden_act": "silu", "hidden_size": 4096, "initializer_range": 0.02,
          "intermediate_size": 14336, "max_position_embeddings": 32768, "model_type": "mixtral",
          "num_attention_heads": 32, "num_experts_per_tok": 2, "num_hidden_layers": 32,
          "num_key_value_heads": 8, "num_local_experts": 8, "output_router_logits": False,
          "rms_norm_eps": 1e-05, "rope_theta": 1000000.0, "router_aux_loss_coef": 0.02,
          "sliding_window": None, "tie_word_embeddings": False, "torch_dtype": "bfloat16", "use_cache": True,
          "vocab_size": 32000}
    params = {"dim": 4096, "n_layers": 32, "head_dim": 128, "hidden_dim": 14336, "n_heads": 32, "n_kv_heads": 8,
              "norm_eps": 1e-05, "vocab_size": 32768, "rope_theta": 1000000.0,
              "moe": {"num_experts": 8, "num_experts_per_tok": 2}}
    index = {"metadata": {"total_size": 93405585408},
             "weight_map": {"lm_head.weight": "model-00019-of-00019.safetensors",
                            "model.embed_tokens.weight": "model-00001-of-00019.safetensors"}}
    odd = '{"a": [1, -2.5e-3, 1E+9, true, null, "\\u00e9\\ud83d\\ude00"], "nested": {"x": [[[]]]}, "hidden_size": "4096"}'
    # Numbers out of every target range (the first fuzz run found get<int64_t>() of a float is UB).
    huge = '{"head_dim": 1e40, "hidden_size": 18446744073709551615, "rope_theta": 1e39, "n_layers": -1}'
    return {
        "config.json": json.dumps(hf, indent=2).encode(),
        "huge_numbers.json": huge.encode(),
        "params.json": json.dumps(params, indent=2).encode(),
        "index.json": json.dumps(index, indent=2).encode(),
        "odd.json": odd.encode(),
    }


def main():
    for sub, seeds in (("gguf", gguf_seeds()), ("safetensors", safetensors_seeds()), ("json", json_seeds())):
        d = os.path.join(HERE, "corpus", sub)
        os.makedirs(d, exist_ok=True)
        for name, data in seeds.items():
            with open(os.path.join(d, name), "wb") as f:
                f.write(data)


if __name__ == "__main__":
    main()
