"""The feed-forward sublayer: a dense MLP, or a mixture of experts (Mixtral, Qwen2-MoE).

Dense MLP as key/value memory: W_in's columns ask questions of the residual stream, W_out's rows write
answers. Gated (SwiGLU) variant: the neuron's activation is act(x·W_gate) · (x·W_in), recorded at hook_post.

Mixture of experts: a router scores every expert per token (``hook_router_logits`` [batch, pos, E]); the
top-k experts run on that token and their outputs are mixed with the routing weights
(``hook_expert_weights`` / ``hook_expert_indices`` [batch, pos, k]). Expert e is an MLP whose hooks
(``experts.{e}.hook_pre`` / ``hook_post``) see only the tokens routed to it, as rows [n_routed, d_expert] in
batch-major token order; :func:`routed_tokens` turns a cached ``hook_expert_indices`` into the (batch, pos) of
each of those rows. Qwen2-MoE adds an always-on shared expert scaled by sigmoid(x·w_gate).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformer_lens.hook_points import HookPoint

from interp.model.config import DecoderConfig


def gelu_new(x: torch.Tensor) -> torch.Tensor:
    """GPT-2's tanh approximation of GELU."""
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x.pow(3))))


def relu2(x: torch.Tensor) -> torch.Tensor:
    """Squared ReLU (Primer; NanoChat)."""
    return F.relu(x).square()


ACTIVATION_FNS = {"gelu": F.gelu, "gelu_new": gelu_new, "relu": F.relu, "silu": F.silu, "relu2": relu2}


class MLP(nn.Module):
    def __init__(self, cfg: DecoderConfig, d_mlp: int | None = None):
        super().__init__()
        d, m = cfg.d_model, cfg.d_mlp if d_mlp is None else d_mlp
        self.gated = cfg.gated
        self.act = ACTIVATION_FNS[cfg.act]
        self.limit, self.alpha = cfg.swiglu_limit, cfg.swiglu_alpha
        self.W_in = nn.Parameter(torch.empty(d, m))
        self.b_in = nn.Parameter(torch.zeros(m)) if cfg.mlp_bias else None
        if cfg.gated:
            self.W_gate = nn.Parameter(torch.empty(d, m))
            self.b_gate = nn.Parameter(torch.zeros(m)) if cfg.mlp_bias else None
            self.hook_pre_linear = HookPoint()
        else:
            self.W_gate = None
        self.W_out = nn.Parameter(torch.empty(m, d))
        self.b_out = nn.Parameter(torch.zeros(d)) if cfg.mlp_bias else None
        self.hook_pre = HookPoint()  # [batch, pos, d_mlp]
        self.hook_post = HookPoint()  # [batch, pos, d_mlp]

    @staticmethod
    def _linear(x, W, b):
        return x @ W if b is None else x @ W + b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gated:
            pre = self.hook_pre(self._linear(x, self.W_gate, self.b_gate))
            pre_linear = self.hook_pre_linear(self._linear(x, self.W_in, self.b_in))
            if self.limit is None:
                post = self.hook_post(self.act(pre) * pre_linear)
            else:  # GPT-OSS: both halves clamped, a sharpened SiLU, and the up projection offset by one
                gate, up = pre.clamp(max=self.limit), pre_linear.clamp(-self.limit, self.limit)
                post = self.hook_post(gate * torch.sigmoid(self.alpha * gate) * (up + 1))
        else:
            pre = self.hook_pre(self._linear(x, self.W_in, self.b_in))
            post = self.hook_post(self.act(pre))
        return self._linear(post, self.W_out, self.b_out)


def routed_tokens(expert_indices: torch.Tensor, expert: int) -> torch.Tensor:
    """(batch, pos) of the tokens routed to ``expert``: LongTensor [n_routed, 2], one row per row of
    ``experts.{expert}.hook_pre`` / ``hook_post``, in the same order.

    ``expert_indices``: a cached ``blocks.{l}.mlp.hook_expert_indices`` [batch, pos, k].
    """
    return (expert_indices == expert).any(-1).nonzero()


def sparsemixer(logits: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """PhiMoE's routing at inference (Liu et al. 2024, SparseMixer): two rounds; each takes the best expert not yet
    chosen and weights it by its softmax probability over the remaining experts whose logit lies within a relative
    margin 2·eps of it, (best - s) / max(|s|, best) <= 2·eps. Returns (weights, indices) [..., 2]."""
    weights, indices, remaining = [], [], logits
    for _ in range(2):
        best, index = remaining.max(dim=-1, keepdim=True)
        outside = (best - logits) / logits.abs().clamp(min=best) > 2 * eps
        probs = torch.softmax(remaining.masked_fill(outside, float("-inf")), dim=-1)
        weights.append(probs.gather(-1, index))
        indices.append(index)
        remaining = remaining.scatter(-1, index, float("-inf"))
    return torch.cat(weights, dim=-1), torch.cat(indices, dim=-1)


def _best_groups_only(scores: torch.Tensor, cfg: DecoderConfig) -> torch.Tensor:
    """DeepSeek's group-limited routing: experts split into router_groups equal groups, each scored by the sum of its
    router_group_score_top best scores (V3: 2, V2: 1); the scores outside the router_topk_groups best groups become
    -inf."""
    grouped = scores.unflatten(-1, (cfg.router_groups, -1))  # [..., groups, experts per group]
    group_scores = grouped.topk(min(cfg.router_group_score_top, grouped.shape[-1]), dim=-1)[0].sum(-1)
    chosen = group_scores.topk(cfg.router_topk_groups, dim=-1)[1]
    best = torch.zeros_like(group_scores, dtype=torch.bool).scatter_(-1, chosen, True)
    return grouped.masked_fill(~best[..., None], float("-inf")).flatten(-2)


class MoE(nn.Module):
    """Top-k routed experts (+ an optional gated shared expert), computed as Mixtral / Qwen2-MoE do."""

    def __init__(self, cfg: DecoderConfig):
        super().__init__()
        self.cfg = cfg
        self.W_router = nn.Parameter(torch.empty(cfg.d_model, cfg.n_experts))  # x @ W_router: logits
        self.b_router = nn.Parameter(torch.zeros(cfg.n_experts)) if cfg.router_bias else None
        # DeepSeek V3: added to the scores when choosing experts, not when weighting them
        self.b_choice = nn.Parameter(torch.zeros(cfg.n_experts)) if cfg.router_correction_bias else None
        self.experts = nn.ModuleList([MLP(cfg, cfg.d_expert) for _ in range(cfg.n_experts)])
        if cfg.d_shared_expert is not None:
            self.shared_expert = MLP(cfg, cfg.d_shared_expert)
            self.W_shared_gate = nn.Parameter(torch.empty(cfg.d_model, 1)) if cfg.shared_expert_gate else None
            self.hook_shared_gate = HookPoint()  # [batch, pos, 1], sigmoid(x . w_gate)
        else:
            self.shared_expert = None
        self.hook_router_logits = HookPoint()  # [batch, pos, n_experts]
        self.hook_expert_weights = HookPoint()  # [batch, pos, k], the mixing weights of the chosen experts
        self.hook_expert_indices = HookPoint()  # [batch, pos, k], which experts

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cfg, k = self.cfg, self.cfg.n_experts_per_token
        logits = x @ self.W_router
        logits = self.hook_router_logits(logits if self.b_router is None else logits + self.b_router)
        if cfg.router_sparsemixer_eps is not None:
            weights, idx = sparsemixer(logits, cfg.router_sparsemixer_eps)
        elif cfg.router_sigmoid:  # each expert's own sigmoid, no competition between them (Llama 4, DeepSeek V3)
            scores = torch.sigmoid(logits.float())
            choice = scores if self.b_choice is None else scores + self.b_choice.float()
            if cfg.router_groups > 1:
                choice = _best_groups_only(choice, cfg)
            idx = torch.topk(choice, k, dim=-1)[1]
            weights = scores.gather(-1, idx)
            if cfg.router_norm_topk:
                weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20)  # DeepSeek's epsilon
        elif cfg.router_softmax_after_topk:
            top, idx = torch.topk(logits, k, dim=-1)
            weights = torch.softmax(top, dim=-1, dtype=torch.float32)
        else:
            probs = torch.softmax(logits, dim=-1, dtype=torch.float32)  # float32 as transformers does
            if cfg.router_groups > 1:  # DeepSeek V2's group_limited_greedy
                probs = _best_groups_only(probs, cfg)
            weights, idx = torch.topk(probs, k, dim=-1)
            if cfg.router_norm_topk:
                weights = weights / weights.sum(dim=-1, keepdim=True)
        if cfg.routed_scaling != 1.0:
            weights = weights * cfg.routed_scaling
        weights = self.hook_expert_weights(weights.to(x.dtype))
        return weights, self.hook_expert_indices(idx)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights, idx = self.route(x)
        flat_x = x.reshape(-1, x.shape[-1])
        flat_idx, flat_w = idx.reshape(-1, idx.shape[-1]), weights.reshape(-1, weights.shape[-1])
        out = torch.zeros_like(flat_x)
        for e, expert in enumerate(self.experts):
            token, slot = (flat_idx == e).nonzero(as_tuple=True)  # batch-major order, as routed_tokens says
            if token.numel() == 0 and not (expert.hook_pre.has_hooks() or expert.hook_post.has_hooks()):
                continue
            w = flat_w[token, slot, None]
            if self.cfg.router_scale_input:  # Llama 4 scales what the expert reads, not what it writes
                out.index_add_(0, token, expert(flat_x[token] * w))
            else:
                out.index_add_(0, token, expert(flat_x[token]) * w)
        if self.shared_expert is not None:
            shared = self.shared_expert(flat_x)
            if self.W_shared_gate is not None:
                gate = self.hook_shared_gate(torch.sigmoid(x @ self.W_shared_gate)).reshape(-1, 1)
                shared = shared * gate
            out = out + shared
        return out.reshape(x.shape)
