"""A Mixtral in PyTorch with Hugging Face's MixtralForCausalLM semantics and parameter names.

RMSNorm (eps 1e-5), RoPE (theta 1e6, rotate-half layout as HF), grouped-query attention, sparse MoE: the
router's softmax over all experts in fp32, top-k, renormalised; SwiGLU experts (w2(silu(w1 x) * w3 x)).
Used by train.py (training, export) and by the perplexity test (the training framework's numbers).
"""
import math

import torch
import torch.nn.functional as F
from torch import nn


class Config:
    def __init__(self, **kw):
        self.vocab_size = kw.get("vocab_size", 4096)
        self.hidden_size = kw.get("hidden_size", 256)
        self.intermediate_size = kw.get("intermediate_size", 512)
        self.num_hidden_layers = kw.get("num_hidden_layers", 4)
        self.num_attention_heads = kw.get("num_attention_heads", 8)
        self.num_key_value_heads = kw.get("num_key_value_heads", 2)
        self.head_dim = kw.get("head_dim", self.hidden_size // self.num_attention_heads)
        self.num_local_experts = kw.get("num_local_experts", 8)
        self.num_experts_per_tok = kw.get("num_experts_per_tok", 2)
        self.max_position_embeddings = kw.get("max_position_embeddings", 1024)
        self.rms_norm_eps = kw.get("rms_norm_eps", 1e-5)
        self.rope_theta = kw.get("rope_theta", 1e6)
        self.router_aux_loss_coef = kw.get("router_aux_loss_coef", 0.02)

    def hf_config(self):
        return {
            "architectures": ["MixtralForCausalLM"],
            "model_type": "mixtral",
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "num_local_experts": self.num_local_experts,
            "num_experts_per_tok": self.num_experts_per_tok,
            "max_position_embeddings": self.max_position_embeddings,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "sliding_window": None,
            "tie_word_embeddings": False,
            "hidden_act": "silu",
            "bos_token_id": 1,
            "eos_token_id": 2,
            "router_aux_loss_coef": self.router_aux_loss_coef,
            "output_router_logits": False,
            "torch_dtype": "float32",
        }

    @staticmethod
    def from_hf(d):
        keys = ["vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "num_local_experts", "num_experts_per_tok", "max_position_embeddings",
                "rms_norm_eps", "rope_theta", "head_dim"]
        return Config(**{k: d[k] for k in keys if k in d and d[k] is not None})


class RMSNorm(nn.Module):
    def __init__(self, dim, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        var = x.pow(2).mean(-1, keepdim=True)
        return self.weight * (x * torch.rsqrt(var + self.eps))


def rope_cos_sin(seq_len, head_dim, theta, dtype):
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
    t = torch.arange(seq_len, dtype=torch.float64)
    freqs = torch.outer(t, inv_freq)
    emb = torch.cat([freqs, freqs], dim=-1)  # [T, hd]
    return emb.cos().to(dtype), emb.sin().to(dtype)


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat([-x[..., h:], x[..., :h]], dim=-1)


class Attention(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.c = c
        hd = c.head_dim
        self.q_proj = nn.Linear(c.hidden_size, c.num_attention_heads * hd, bias=False)
        self.k_proj = nn.Linear(c.hidden_size, c.num_key_value_heads * hd, bias=False)
        self.v_proj = nn.Linear(c.hidden_size, c.num_key_value_heads * hd, bias=False)
        self.o_proj = nn.Linear(c.num_attention_heads * hd, c.hidden_size, bias=False)

    def forward(self, x, cos, sin, mask):
        B, T, _ = x.shape  # x: [B, T, D]
        c = self.c
        hd, H, KV = c.head_dim, c.num_attention_heads, c.num_key_value_heads
        q = self.q_proj(x).view(B, T, H, hd).transpose(1, 2)  # [B, H, T, hd]
        k = self.k_proj(x).view(B, T, KV, hd).transpose(1, 2)  # [B, KV, T, hd]
        v = self.v_proj(x).view(B, T, KV, hd).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        rep = H // KV
        k = k.repeat_interleave(rep, dim=1)  # [B, H, T, hd]
        v = v.repeat_interleave(rep, dim=1)
        att = (q @ k.transpose(-1, -2)) / math.sqrt(hd) + mask  # [B, H, T, T]
        att = att.softmax(-1)
        y = (att @ v).transpose(1, 2).reshape(B, T, H * hd)
        return self.o_proj(y)


class Expert(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.w1 = nn.Linear(c.hidden_size, c.intermediate_size, bias=False)
        self.w2 = nn.Linear(c.intermediate_size, c.hidden_size, bias=False)
        self.w3 = nn.Linear(c.hidden_size, c.intermediate_size, bias=False)

    def forward(self, x):
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class SparseMoe(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.c = c
        self.gate = nn.Linear(c.hidden_size, c.num_local_experts, bias=False)
        self.experts = nn.ModuleList([Expert(c) for _ in range(c.num_local_experts)])

    def forward(self, x):
        B, T, D = x.shape
        xf = x.reshape(-1, D)  # [N, D]
        logits = self.gate(xf)  # [N, E]
        probs = logits.float().softmax(-1)
        topw, topi = probs.topk(self.c.num_experts_per_tok, dim=-1)  # [N, k]
        topw = (topw / topw.sum(-1, keepdim=True)).to(x.dtype)
        out = torch.zeros_like(xf)
        for e, expert in enumerate(self.experts):
            rows, slot = torch.where(topi == e)
            if rows.numel() == 0:
                continue
            y = expert(xf[rows]) * topw[rows, slot].unsqueeze(-1)
            out.index_add_(0, rows, y)
        return out.view(B, T, D), probs, topi


class Layer(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.self_attn = Attention(c)
        self.block_sparse_moe = SparseMoe(c)
        self.input_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps)

    def forward(self, h, cos, sin, mask):
        h = h + self.self_attn(self.input_layernorm(h), cos, sin, mask)
        y, probs, topi = self.block_sparse_moe(self.post_attention_layernorm(h))
        return h + y, probs, topi


class Inner(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.embed_tokens = nn.Embedding(c.vocab_size, c.hidden_size)
        self.layers = nn.ModuleList([Layer(c) for _ in range(c.num_hidden_layers)])
        self.norm = RMSNorm(c.hidden_size, c.rms_norm_eps)


class Mixtral(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.c = c
        self.model = Inner(c)
        self.lm_head = nn.Linear(c.hidden_size, c.vocab_size, bias=False)

    def forward(self, tokens, with_aux=False):
        """tokens [B, T] -> logits [B, T, V] (and the load-balancing loss, as HF's, with_aux)."""
        B, T = tokens.shape
        c = self.c
        h = self.model.embed_tokens(tokens)  # [B, T, D]
        cos, sin = rope_cos_sin(T, c.head_dim, c.rope_theta, h.dtype)
        mask = torch.full((T, T), float("-inf"), dtype=h.dtype).triu(1)
        aux = h.new_zeros(())
        for layer in self.model.layers:
            h, probs, topi = layer(h, cos, sin, mask)
            if with_aux:
                E = c.num_local_experts
                chosen = F.one_hot(topi, E).float().mean(0)  # [k, E]: fraction of tokens per expert
                aux = aux + E * (chosen * probs.mean(0).unsqueeze(0)).sum()
        logits = self.lm_head(self.model.norm(h))
        if with_aux:
            return logits, aux / len(self.model.layers)
        return logits


def sliding_windows(n, ctx, stride):
    """HF's perplexity recipe: [(begin, end, n_new)] - each window [begin, end) scores only its last n_new
    targets (the tokens not scored by an earlier window); the first window scores all but its first token."""
    out, prev_end = [], 0
    for begin in range(0, n, stride):
        end = min(begin + ctx, n)
        n_new = end - prev_end
        out.append((begin, end, n_new))
        prev_end = end
        if end == n:
            break
    return out


@torch.no_grad()
def perplexity(model, ids, ctx, stride):
    """Sum of NLL (nats, float64) and the number of tokens scored over HF-style sliding windows."""
    nll, count = 0.0, 0
    for begin, end, n_new in sliding_windows(len(ids), ctx, stride):
        x = torch.tensor(ids[begin:end]).unsqueeze(0)
        logp = model(x)[0].double().log_softmax(-1)  # [T, V]
        T = end - begin
        first = max(T - n_new, 1)  # target positions first..T-1, predicted from rows first-1..T-2
        tgt = x[0, first:T]
        nll -= logp[first - 1:T - 1].gather(1, tgt.unsqueeze(1)).sum().item()
        count += T - first
    return nll, count
