"""The core model on its own: every architecture option, hooks, cache methods, generation, errors, checkpoints.

References used here (never the code under test checking itself):

* ``reference_forward`` — a separate float64 implementation of every DecoderConfig option written from
  the formulas (complex-number RoPE, Vaswani's sinusoid, torch's functional layer_norm, an explicit
  per-head loop for GQA/MQA). Our eager and sdpa backends must match it, and each other to 1e-5 in fp32.
* hand computations from cached activations and the weights (ablations, cache decompositions);
* the model's own full forward pass for the KV-cached generation steps;
* constructed logits with known top-k / top-p / min-p sets for the samplers.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import word_level_tokenizer
from safetensors.torch import load_file, save_file

import interp
from interp.errors import InterpError
from interp.generate import filter_logits, generate, sample_next
from interp.model.attention import Attention, KVCache
from interp.model.config import DecoderConfig
from interp.model.transformer import HookedDecoder

V = 64
BASE = {"d_vocab": V, "n_ctx": 24, "d_model": 32, "n_layers": 2, "n_heads": 4, "init_std": 0.15}

# Each entry covers several options at once; together they cover every value of every architecture field.
ARCHS: dict[str, dict] = {
    "gpt2_like": {"positional": "learned", "norm": "layernorm", "act": "gelu_new"},
    "sinusoidal_post_relu_gqa_tied_nobias": {
        "positional": "sinusoidal", "norm": "rmsnorm", "norm_placement": "post", "act": "relu", "n_kv_heads": 2,
        "attn_bias": False, "mlp_bias": False, "tie_embeddings": True,
    },
    "partial_rotary_deepnorm_mqa_gated": {
        "positional": "rotary", "rotary_fraction": 0.5, "norm": "layernorm", "norm_placement": "deepnorm", "act": "gelu",
        "n_kv_heads": 1, "gated": True,
    },
    "llama_like": {
        "positional": "rotary", "norm": "rmsnorm", "act": "silu", "gated": True, "n_kv_heads": 2, "attn_bias": False,
        "mlp_bias": False, "d_mlp": 48, "rotary_base": 500.0,
    },
    "neox_like_parallel": {
        "positional": "rotary", "rotary_fraction": 0.25, "norm": "layernorm", "act": "gelu", "parallel_residual": True,
        "tie_embeddings": True,
    },
    "nopos_parallel_rms_gelu_new_outbias_off": {
        "positional": "none", "norm": "rmsnorm", "act": "gelu_new", "parallel_residual": True, "attn_out_bias": False,
    },
    "explicit_dhead_post_silu": {
        "positional": "learned", "norm": "layernorm", "norm_placement": "post", "act": "silu", "d_head": 12, "n_heads": 2,
    },
}


@torch.no_grad()
def make_model(seed: int = 0, noise: float = 0.1, **overrides) -> HookedDecoder:
    """A tiny random model whose biases and norm gains are non-trivial (init sets them to 0 and 1)."""
    torch.manual_seed(seed)
    model = HookedDecoder(DecoderConfig(**{**BASE, **overrides})).eval()
    for name, p in model.named_parameters():
        if name.endswith((".b", ".w")) or ".b_" in name or name.startswith("unembed.b_U"):
            p.add_(noise * torch.randn_like(p))
    return model


def rand_tokens(batch=2, pos=11, seed=0, vocab=V):
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (batch, pos), generator=gen)


# --- an independent float64 reference implementation -------------------------------------------
def _rope(x, base, rotary_dim):
    """Rotate pairs (i, i + rotary_dim/2) of x [b, h, pos, d] by pos·base^(-2i/rotary_dim), as complex numbers."""
    if rotary_dim == 0:
        return x
    half = rotary_dim // 2
    pos = torch.arange(x.shape[-2], dtype=torch.float64)
    theta = base ** (-torch.arange(half, dtype=torch.float64) * 2 / rotary_dim)
    phase = torch.polar(torch.ones(len(pos), half, dtype=torch.float64), pos[:, None] * theta[None])
    z = torch.complex(x[..., :half], x[..., half:rotary_dim]) * phase
    return torch.cat([z.real, z.imag, x[..., rotary_dim:]], dim=-1)


def _sinusoid(n, d):
    pe = torch.zeros(n, d, dtype=torch.float64)
    for p in range(n):
        for i in range(0, d, 2):
            angle = p / (10000 ** (i / d))
            pe[p, i] = math.sin(angle)
            if i + 1 < d:
                pe[p, i + 1] = math.cos(angle)
    return pe


def reference_forward(model: HookedDecoder, tokens: torch.Tensor) -> torch.Tensor:
    cfg = model.cfg
    P = {k: v.detach().double() for k, v in model.state_dict().items()}
    d, H, K, dh = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.d_head
    T = tokens.shape[1]

    def norm(x, prefix):
        if cfg.norm == "layernorm":
            return F.layer_norm(x, (d,), P[prefix + ".w"], P[prefix + ".b"], cfg.norm_eps)
        return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + cfg.norm_eps) * P[prefix + ".w"]

    def act(x):
        if cfg.act == "gelu":
            return 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))
        if cfg.act == "gelu_new":
            return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))
        if cfg.act == "relu":
            return x.clamp(min=0)
        return x * torch.sigmoid(x)

    def attention(x, layer):
        p = f"blocks.{layer}.attn."

        def proj(W, b):
            out = torch.einsum("bpm,hmd->bhpd", x, P[p + W])
            return out + P[p + b][None, :, None] if p + b in P else out

        q, k, v = proj("W_Q", "b_Q"), proj("W_K", "b_K"), proj("W_V", "b_V")
        if cfg.positional == "rotary":
            q, k = _rope(q, cfg.rotary_base, cfg.rotary_dim), _rope(k, cfg.rotary_base, cfg.rotary_dim)
        future = torch.triu(torch.ones(T, T, dtype=torch.bool), diagonal=1)
        z = torch.zeros(x.shape[0], T, H, dh, dtype=torch.float64)
        for h in range(H):
            kv = h * K // H  # query head h reads key/value head h // (H / K)
            scores = q[:, h] @ k[:, kv].transpose(-1, -2) / math.sqrt(dh)
            z[:, :, h] = torch.softmax(scores.masked_fill(future, float("-inf")), -1) @ v[:, kv]
        out = torch.einsum("bphd,hdm->bpm", z, P[p + "W_O"])
        return out + P[p + "b_O"] if p + "b_O" in P else out

    def mlp(x, layer):
        p = f"blocks.{layer}.mlp."

        def lin(x, W, b):
            return x @ P[p + W] + P[p + b] if p + b in P else x @ P[p + W]

        hidden = act(lin(x, "W_gate", "b_gate")) * lin(x, "W_in", "b_in") if cfg.gated else act(lin(x, "W_in", "b_in"))
        return lin(hidden, "W_out", "b_out")

    x = P["embed.W_E"][tokens]
    if cfg.positional == "learned":
        x = x + P["pos_embed.W_pos"][:T]
    elif cfg.positional == "sinusoidal":
        x = x + _sinusoid(T, d)
    alpha = (2 * cfg.n_layers) ** 0.25 if cfg.norm_placement == "deepnorm" else 1.0
    for layer in range(cfg.n_layers):
        ln1, ln2 = f"blocks.{layer}.ln1", f"blocks.{layer}.ln2"
        if cfg.norm_placement == "pre" and cfg.parallel_residual:
            x = x + attention(norm(x, ln1), layer) + mlp(norm(x, ln2), layer)
        elif cfg.norm_placement == "pre":
            x = x + attention(norm(x, ln1), layer)
            x = x + mlp(norm(x, ln2), layer)
        else:  # post-LN (alpha 1) and DeepNorm
            x = norm(alpha * x + attention(x, layer), ln1)
            x = norm(alpha * x + mlp(x, layer), ln2)
    x = norm(x, "ln_final")
    W_U = P["embed.W_E"].T if cfg.tie_embeddings else P["unembed.W_U_param"]
    return x @ W_U + P["unembed.b_U"]


# --- architectures: reference, eager ≡ sdpa, KV cache ---------------------------------------------
@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_matches_float64_reference(arch):
    model = make_model(**ARCHS[arch], dtype="float64")
    tokens = rand_tokens(pos=13)
    ref = reference_forward(model, tokens)
    assert ref.abs().max() > 0.3
    for backend in ("eager", "sdpa"):
        with torch.no_grad():
            torch.testing.assert_close(model(tokens, attn_backend=backend), ref, atol=1e-12, rtol=0)


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_eager_equals_sdpa_fp32(arch):
    model = make_model(**ARCHS[arch])
    tokens = rand_tokens(batch=3, pos=19, seed=1)
    with torch.no_grad():
        eager = model(tokens, attn_backend="eager")
        sdpa = model(tokens, attn_backend="sdpa")
    torch.testing.assert_close(eager, sdpa, atol=1e-5, rtol=0)


@pytest.mark.parametrize("backend", ["eager", "sdpa"])
@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_kv_cached_steps_equal_full_forward(arch, backend):
    model = make_model(**ARCHS[arch])
    tokens = rand_tokens(batch=2, pos=12, seed=2)
    cache = KVCache(model.cfg.n_layers)
    with torch.no_grad():
        full = model(tokens, attn_backend=backend)
        first = model(tokens[:, :7], kv_cache=cache, attn_backend=backend)
        torch.testing.assert_close(first, full[:, :7], atol=1e-5, rtol=0)
        steps = [model(tokens[:, t:t + 1], kv_cache=cache, attn_backend=backend)[:, 0] for t in range(7, 10)]
        steps.append(model(tokens[:, 10:], kv_cache=cache, attn_backend=backend)[:, -1])  # 2 tokens at once
    assert cache.length == 12
    torch.testing.assert_close(torch.stack(steps, 1), full[:, [7, 8, 9, 11]], atol=1e-5, rtol=0)


def test_every_config_field_value_is_covered():
    """Guard: the sweep above really covers every value of every architecture option."""
    cfgs = [DecoderConfig(**{**BASE, **kw}) for kw in ARCHS.values()]
    cover = {
        "positional": {"learned", "sinusoidal", "rotary", "none"},
        "norm": {"layernorm", "rmsnorm"},
        "norm_placement": {"pre", "post", "deepnorm"},
        "act": {"gelu", "gelu_new", "relu", "silu"},
        "gated": {True, False}, "parallel_residual": {True, False}, "attn_bias": {True, False},
        "mlp_bias": {True, False}, "tie_embeddings": {True, False},
    }
    for field, values in cover.items():
        assert {getattr(c, field) for c in cfgs} == values, field
    assert {"mha", "gqa", "mqa"} == {
        "mha" if c.n_kv_heads == c.n_heads else "mqa" if c.n_kv_heads == 1 else "gqa" for c in cfgs
    }
    assert any(0 < c.rotary_fraction < 1 and c.positional == "rotary" for c in cfgs)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("arch", ["gpt2_like", "llama_like", "partial_rotary_deepnorm_mqa_gated"])
def test_cuda_backends_match_the_cpu(arch):
    """On a GPU every backend (eager, sdpa, and triton/auto) gives the CPU eager logits; KV cache included."""
    model = make_model(**{**ARCHS[arch], "d_model": 128})  # d_head 32: a head size fused kernels support
    tokens = rand_tokens(batch=2, pos=19, seed=14)
    with torch.no_grad():
        ref = model(tokens, attn_backend="eager")
        gpu = model.to("cuda")
        for backend in ("eager", "sdpa", "auto"):
            torch.testing.assert_close(gpu(tokens.cuda(), attn_backend=backend).cpu(), ref, atol=1e-4, rtol=0)
        cache = KVCache(model.cfg.n_layers)
        gpu(tokens[:, :15].cuda(), kv_cache=cache, attn_backend="auto")
        step = gpu(tokens[:, 15:16].cuda(), kv_cache=cache, attn_backend="auto")[:, 0].cpu()
    torch.testing.assert_close(step, ref[:, 15], atol=1e-4, rtol=0)


# --- ActivationCache methods against hand computations -------------------------------------------
PRE_NORM = ["gpt2_like", "llama_like", "neox_like_parallel"]


def _cached(arch, seed=3):
    model = make_model(**ARCHS[arch])
    tokens = rand_tokens(batch=2, pos=9, seed=seed)
    with torch.no_grad():
        logits, cache = model.run_with_cache(tokens)
    return model, tokens, logits, cache


@pytest.mark.parametrize("arch", PRE_NORM)
def test_accumulated_resid_last_entry_gives_the_logits(arch):
    model, _, logits, cache = _cached(arch)
    with torch.no_grad():
        stack = cache.accumulated_resid(apply_ln=True)
    assert stack.shape[0] == model.cfg.n_layers + 1
    torch.testing.assert_close(stack[-1] @ model.W_U + model.b_U, logits, atol=1e-5, rtol=0)
    # the first entry is the embedding stream (resid_pre of layer 0)
    raw = cache.accumulated_resid()
    torch.testing.assert_close(raw[0], cache["blocks.0.hook_resid_pre"])


@pytest.mark.parametrize("arch", PRE_NORM)
def test_decompose_resid_sums_to_the_residual_stream(arch):
    model, _, _, cache = _cached(arch)
    parts, labels = cache.decompose_resid(return_labels=True)
    final = cache[f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"]
    torch.testing.assert_close(parts.sum(0), final, atol=1e-5, rtol=0)
    assert labels[0] == "embed" and labels[-1] == f"{model.cfg.n_layers - 1}_mlp_out"
    assert ("pos_embed" in labels) == (model.cfg.positional == "learned")
    # and into the middle of the model: the input of layer 1's MLP
    mid = cache.decompose_resid(layer=1, mlp_input=True)
    torch.testing.assert_close(mid.sum(0), cache["blocks.1.hook_resid_mid" if not model.cfg.parallel_residual
                                                    else "blocks.1.hook_resid_pre"] + (
        cache["blocks.1.hook_attn_out"] if model.cfg.parallel_residual else 0), atol=1e-5, rtol=0)


@pytest.mark.parametrize("arch", PRE_NORM)
def test_apply_ln_to_stack_matches_the_norms(arch):
    model, _, _, cache = _cached(arch)
    ln_final = model.ln_final
    final = cache[f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"]
    scaled = cache.apply_ln_to_stack(cache.decompose_resid(), layer=None)
    torch.testing.assert_close(scaled.sum(0), cache["ln_final.hook_normalized"], atol=1e-5, rtol=0)
    bias = 0 if ln_final.b is None else ln_final.b
    with torch.no_grad():
        torch.testing.assert_close(scaled.sum(0) * ln_final.w + bias, ln_final(final), atol=1e-5, rtol=0)
    # and at a block's input norms (ln1 of layer 1; ln2 of layer 1 with mlp_input)
    s1 = cache.apply_ln_to_stack(cache.decompose_resid(layer=1), layer=1)
    torch.testing.assert_close(s1.sum(0), cache["blocks.1.ln1.hook_normalized"], atol=1e-5, rtol=0)
    if not model.cfg.parallel_residual:
        s2 = cache.apply_ln_to_stack(cache.decompose_resid(layer=1, mlp_input=True), layer=1, mlp_input=True)
        torch.testing.assert_close(s2.sum(0), cache["blocks.1.ln2.hook_normalized"], atol=1e-5, rtol=0)


@pytest.mark.parametrize("arch", PRE_NORM)
def test_logit_attrs_sum_to_the_logit_difference(arch):
    model, tokens, logits, cache = _cached(arch)
    correct = torch.roll(tokens, -1, dims=1)
    wrong = (correct + 7) % V
    attrs = cache.logit_attrs(cache.decompose_resid(), tokens=correct, incorrect_tokens=wrong)
    assert attrs.shape == (len(cache.decompose_resid()),) + tuple(tokens.shape)
    # Hand computation: the final stream, centred (LayerNorm) and divided by the cached ln_final scale,
    # projected on W_U[:, correct] - W_U[:, wrong].
    final = cache[f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"]
    if model.cfg.norm == "layernorm":
        final = final - final.mean(-1, keepdim=True)
    direction = (model.W_U[:, correct] - model.W_U[:, wrong]).permute(1, 2, 0)
    hand = (final / cache["ln_final.hook_scale"] * direction).sum(-1)
    torch.testing.assert_close(attrs.sum(0), hand, atol=1e-5, rtol=0)
    # With ln_final's gain 1, its bias 0 and b_U 0 (TransformerLens' folded form) that is the logit difference.
    with torch.no_grad():
        model.ln_final.w.fill_(1.0)
        if model.ln_final.b is not None:
            model.ln_final.b.zero_()
        model.unembed.b_U.zero_()
        logits, cache = model.run_with_cache(tokens)
    attrs = cache.logit_attrs(cache.decompose_resid(), tokens=correct, incorrect_tokens=wrong)
    diff = logits.gather(-1, correct[..., None])[..., 0] - logits.gather(-1, wrong[..., None])[..., 0]
    torch.testing.assert_close(attrs.sum(0), diff, atol=1e-5, rtol=0)


# --- hooks -----------------------------------------------------------------------------------------
def test_zeroing_a_head_equals_manual_computation():
    model = make_model(**ARCHS["gpt2_like"])
    tokens = rand_tokens(seed=4)
    layer, head = 1, 2

    def ablate(z, hook):
        z = z.clone()
        z[:, :, head] = 0.0
        return z

    with torch.no_grad():
        clean, cache = model.run_with_cache(tokens)
        ablated = model.run_with_hooks(tokens, fwd_hooks=[(f"blocks.{layer}.attn.hook_z", ablate)])
        block = model.blocks[layer]
        z = cache[f"blocks.{layer}.attn.hook_z"].clone()
        z[:, :, head] = 0
        attn_out = torch.einsum("bphd,hdm->bpm", z, block.attn.W_O) + block.attn.b_O
        mid = cache[f"blocks.{layer}.hook_resid_pre"] + attn_out
        post = mid + block.mlp(block.ln2(mid))
        manual = model.unembed(model.ln_final(post))
    assert (ablated - clean).abs().max() > 1e-3
    torch.testing.assert_close(ablated, manual, atol=1e-5, rtol=0)


@pytest.mark.parametrize("arch", ["gpt2_like", "llama_like"])
def test_zeroing_the_last_mlp_leaves_resid_mid(arch):
    model = make_model(**ARCHS[arch])
    tokens = rand_tokens(seed=5)
    last = model.cfg.n_layers - 1
    with torch.no_grad():
        clean, cache = model.run_with_cache(tokens)
        ablated = model.run_with_hooks(
            tokens, fwd_hooks=[(f"blocks.{last}.hook_mlp_out", lambda a, hook: torch.zeros_like(a))]
        )
        manual = model.unembed(model.ln_final(cache[f"blocks.{last}.hook_resid_mid"]))
    assert (ablated - clean).abs().max() > 1e-3
    torch.testing.assert_close(ablated, manual, atol=1e-5, rtol=0)


def test_editing_the_pattern_takes_effect_even_on_a_fused_backend():
    """Uniform attention over the visible keys makes z the running mean of v (per kv head for GQA)."""
    model = make_model(**ARCHS["llama_like"], attn_backend="sdpa")
    tokens = rand_tokens(batch=1, pos=8, seed=6)

    def uniform(pattern, hook):
        visible = torch.tril(torch.ones_like(pattern[0, 0]))
        return (visible / visible.sum(-1, keepdim=True)).expand_as(pattern)

    with torch.no_grad():
        clean = model(tokens)
        logits, cache = model.run_with_cache(
            tokens, names_filter=lambda n: n.startswith("blocks.0.attn"),
        )
        with model.hooks(fwd_hooks=[("blocks.0.attn.hook_pattern", uniform)]):
            edited, edited_cache = model.run_with_cache(tokens, names_filter="blocks.0.attn.hook_z")
    v = cache["blocks.0.attn.hook_v"].repeat_interleave(model.cfg.n_heads // model.cfg.n_kv_heads, dim=2)
    running_mean = v.cumsum(1) / torch.arange(1, 9)[None, :, None, None]
    torch.testing.assert_close(edited_cache["blocks.0.attn.hook_z"], running_mean, atol=1e-6, rtol=0)
    assert (edited - clean).abs().max() > 1e-3
    torch.testing.assert_close(logits, clean, atol=1e-5, rtol=0)  # caching alone changes nothing


def test_patterns_are_computed_only_when_hooked(monkeypatch):
    calls = []
    original = Attention._eager

    def counting(self, q, k, v, *rest):
        calls.append(self.layer)
        return original(self, q, k, v, *rest)

    monkeypatch.setattr(Attention, "_eager", counting)
    model = make_model(**ARCHS["gpt2_like"], attn_backend="sdpa")
    tokens = rand_tokens(seed=7)
    with torch.no_grad():
        plain = model(tokens)
        assert calls == []  # no hook: fused everywhere, no [query, key] matrix
        model.run_with_cache(tokens, names_filter=lambda n: "hook_pattern" not in n and "attn_scores" not in n)
        assert calls == []  # caching everything else does not need the pattern either
        model.run_with_hooks(tokens, fwd_hooks=[("blocks.1.attn.hook_pattern", lambda p, hook: None)])
        assert calls == [1]  # only the hooked layer
        calls.clear()
        model.run_with_cache(tokens, names_filter="blocks.0.attn.hook_attn_scores", lazy_patterns=False)
        assert calls == [0]
        calls.clear()
        _, cache = model.run_with_cache(tokens)  # lazy (default): stays fused, patterns rebuilt on read
        assert calls == []
        _, cache = model.run_with_cache(tokens, lazy_patterns=False)
        assert sorted(calls) == [0, 1]
    p = cache["blocks.1.attn.hook_pattern"]
    torch.testing.assert_close(p.sum(-1), torch.ones_like(p.sum(-1)))
    assert (p.triu(diagonal=1) == 0).all()
    assert torch.isinf(cache["blocks.0.attn.hook_attn_scores"].triu(diagonal=1)[..., 0, 1:]).all()
    torch.testing.assert_close(model(tokens), plain)


def test_hook_result_is_opt_in_and_sums_to_attn_out():
    model = make_model(**ARCHS["gpt2_like"], use_attn_result=True)
    with torch.no_grad():
        _, cache = model.run_with_cache(rand_tokens(seed=8))
    result = cache["blocks.0.attn.hook_result"]
    assert result.shape == (2, 11, 4, 32)
    torch.testing.assert_close(result.sum(2) + model.blocks[0].attn.b_O, cache["blocks.0.hook_attn_out"],
                               atol=1e-6, rtol=0)


# --- generation --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def gen_model():
    return make_model(**ARCHS["llama_like"], eos_token_id=3)


def _greedy_by_hand(model, tokens, n):
    for _ in range(n):
        with torch.no_grad():
            nxt = model(tokens)[:, -1].argmax(-1)
        tokens = torch.cat([tokens, nxt[:, None]], 1)
    return tokens


def test_greedy_equals_argmax_of_full_forward(gen_model):
    prompt = rand_tokens(batch=2, pos=5, seed=9)
    out = generate(gen_model, prompt, max_new_tokens=8, temperature=0, stop_at_eos=False)
    assert out.shape == (2, 13) and torch.equal(out[:, :5], prompt)
    assert torch.equal(out, _greedy_by_hand(gen_model, prompt, 8))
    no_cache = generate(gen_model, prompt, max_new_tokens=8, temperature=0, stop_at_eos=False, use_kv_cache=False)
    assert torch.equal(out, no_cache)


def test_sampling_is_seeded_and_cache_independent(gen_model):
    prompt = rand_tokens(batch=2, pos=4, seed=10)
    kw = {"max_new_tokens": 10, "temperature": 1.5, "stop_at_eos": False}
    a = generate(gen_model, prompt, seed=123, **kw)
    assert torch.equal(a, generate(gen_model, prompt, seed=123, **kw))
    assert torch.equal(a, generate(gen_model, prompt, seed=123, use_kv_cache=False, **kw))
    assert not torch.equal(a, generate(gen_model, prompt, seed=124, **kw))


def test_temperature_to_zero_is_greedy():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(500, 40, generator=gen) * 3
    greedy = logits.argmax(-1)
    assert torch.equal(sample_next(logits, temperature=0), greedy)
    assert torch.equal(sample_next(logits, temperature=1e-4, generator=gen), greedy)
    assert not torch.equal(sample_next(logits, temperature=1.0, generator=gen), greedy)


PROBS = torch.tensor([0.30, 0.25, 0.20, 0.12, 0.08, 0.05])  # sorted, so the sets are easy to read


@pytest.mark.parametrize(
    "kwargs,allowed",
    [
        ({"top_k": 2}, {0, 1}),
        ({"top_k": 4}, {0, 1, 2, 3}),
        ({"top_p": 0.5}, {0, 1}),  # 0.30 < 0.5 <= 0.55: the smallest set reaching p
        ({"top_p": 0.7}, {0, 1, 2}),
        ({"top_p": 0.2}, {0}),  # the best token alone already exceeds p
        ({"min_p": 0.5}, {0, 1, 2}),  # keep p >= 0.5 * 0.30 = 0.15
        ({"min_p": 0.3}, {0, 1, 2, 3}),  # keep p >= 0.09
        ({"top_k": 3, "min_p": 0.5}, {0, 1, 2}),
        ({"top_k": 5, "top_p": 0.7}, {0, 1, 2}),
    ],
)
def test_samplers_never_leave_their_set(kwargs, allowed):
    perm = torch.tensor([3, 0, 5, 1, 4, 2])  # scatter the ranks so position in the vocab is no hint
    logits = torch.empty(6)
    logits[perm] = PROBS.log()
    allowed_ids = {int(perm[i]) for i in allowed}
    finite = filter_logits(logits[None], **kwargs)[0].isfinite().nonzero().flatten().tolist()
    assert set(finite) == allowed_ids
    gen = torch.Generator().manual_seed(1)
    draws = sample_next(logits.expand(4000, 6), temperature=1.0, generator=gen, **kwargs)
    counts = torch.bincount(draws, minlength=6).float()
    assert set(counts.nonzero().flatten().tolist()) == allowed_ids  # never outside, every member reached
    # frequencies follow the renormalised probabilities (4000 draws: 5 sigma is < 0.04)
    expected = torch.zeros(6)
    expected[list(allowed_ids)] = logits.exp()[list(allowed_ids)]
    expected /= expected.sum()
    assert (counts / 4000 - expected).abs().max() < 0.04


def test_hooks_act_during_generation(gen_model):
    prompt = rand_tokens(batch=1, pos=4, seed=11)
    direction = gen_model.W_U[:, 17] * 50  # pushes the residual stream towards token 17

    def steer(resid, hook):
        return resid + direction

    plain = generate(gen_model, prompt, max_new_tokens=6, temperature=0, stop_at_eos=False)
    with gen_model.hooks(fwd_hooks=[("blocks.1.hook_resid_post", steer)]):
        steered = generate(gen_model, prompt, max_new_tokens=6, temperature=0, stop_at_eos=False)
        by_hand = _greedy_by_hand(gen_model, prompt, 6)
    assert not torch.equal(plain, steered)
    assert torch.equal(steered, by_hand)
    assert (steered[0, 4:] == 17).all()
    assert torch.equal(plain, generate(gen_model, prompt, max_new_tokens=6, temperature=0, stop_at_eos=False))


def test_generation_stops_at_eos():
    model = make_model(**ARCHS["gpt2_like"], eos_token_id=5)
    prompt = rand_tokens(batch=2, pos=3, seed=12)
    with torch.no_grad():
        model.unembed.b_U[5] = 100.0  # EOS is always the best token
    out = generate(model, prompt, max_new_tokens=6, temperature=0.7)
    assert out.shape == (2, 4) and (out[:, 3] == 5).all()
    out = generate(model, prompt, max_new_tokens=6, temperature=0.7, stop_at_eos=False)
    assert out.shape == (2, 9)
    # Rows finish independently: a finished row is padded with EOS while the other continues, and
    # generation stops once every row has finished.
    with torch.no_grad():
        model.unembed.b_U[5] = 0.0
    free = generate(model, prompt, max_new_tokens=6, temperature=0, stop_at_eos=False)
    eos = int(free[0, 3])  # call row 0's first new token "EOS" for this run
    row1 = free[1, 3:].tolist()
    assert eos in row1[1:-1]  # row 1 reaches it later, strictly inside the budget (else pick another seed)
    length = 3 + row1.index(eos) + 1
    out = generate(model, prompt, max_new_tokens=6, temperature=0, eos_token_id=eos)
    assert out.shape == (2, length)
    assert (out[0, 3:] == eos).all()
    assert torch.equal(out[1], free[1, :length])


# --- bad input ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small():
    return make_model(**ARCHS["gpt2_like"])


def test_empty_prompt(small):
    with pytest.raises(InterpError, match="empty"):
        small(torch.zeros(1, 0, dtype=torch.long))
    with pytest.raises(InterpError, match="empty"):
        generate(small, torch.zeros(2, 0, dtype=torch.long), max_new_tokens=2)
    model = make_model(**ARCHS["gpt2_like"])
    model.tokenizer = word_level_tokenizer(V)
    with pytest.raises(InterpError, match="empty"):
        model("")


def test_prompt_longer_than_context(small):
    with pytest.raises(InterpError, match=r"25 positions.*n_ctx=24"):
        small(rand_tokens(batch=1, pos=25))
    with pytest.raises(InterpError, match=r"n_ctx=24"):
        generate(small, rand_tokens(batch=1, pos=25), max_new_tokens=1)
    with pytest.raises(InterpError, match=r"max_new_tokens=5.*20 tokens.*n_ctx=24.*at most 4"):
        generate(small, rand_tokens(batch=1, pos=20), max_new_tokens=5)
    # and through the KV cache, past + new positions count
    cache = KVCache(small.cfg.n_layers)
    small(rand_tokens(batch=1, pos=20), kv_cache=cache)
    with pytest.raises(InterpError, match=r"n_ctx=24"):
        small(rand_tokens(batch=1, pos=5), kv_cache=cache)


@pytest.mark.parametrize("bad", [V, -1, 10_000])
def test_token_ids_out_of_range(small, bad):
    tokens = rand_tokens(batch=1, pos=4)
    tokens[0, 2] = bad
    with pytest.raises(InterpError, match=rf"token id {bad}.*\[0, {V - 1}\].*d_vocab={V}"):
        small(tokens)


def test_non_integer_and_misshapen_tokens(small):
    with pytest.raises(InterpError, match="integer token ids.*float32"):
        small(torch.ones(1, 3))
    with pytest.raises(InterpError, match=r"\[batch, pos\].*\(1, 2, 3\)"):
        small(torch.zeros(1, 2, 3, dtype=torch.long))
    with pytest.raises(InterpError, match="return_type"):
        small(rand_tokens(), return_type="probs")
    with pytest.raises(InterpError, match="attn_backend.*'flash'"):
        small(rand_tokens(), attn_backend="flash")


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU machine the CPU model could move to CUDA")
def test_triton_backend_on_cpu_is_refused(small, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")  # (test_kernels sets it for the process: the interpreter would run)
    with pytest.raises(InterpError, match=r"attn_backend='triton' needs a CUDA device.*cpu"):
        small(rand_tokens(), attn_backend="triton")


@pytest.mark.parametrize(
    "overrides,pattern",
    [
        ({"n_heads": 4, "n_kv_heads": 3}, r"n_heads \(4\).*n_kv_heads \(3\).*\[1, 2, 4\]"),
        ({"n_heads": 3}, r"d_model \(32\).*n_heads \(3\)"),
        ({"positional": "alibi"}, r"positional.*'learned'.*'alibi'"),
        ({"norm": "batchnorm"}, r"norm must be one of.*'batchnorm'"),
        ({"norm_placement": "middle"}, r"norm_placement.*'middle'"),
        ({"act": "tanh"}, r"act must be one of.*'tanh'"),
        ({"d_model": 0}, r"d_model must be a positive integer; got 0"),
        ({"rotary_fraction": 0.0, "positional": "rotary"}, r"rotary_fraction must be in \(0, 1\]; got 0.0"),
        ({"rotary_fraction": 0.375, "positional": "rotary"}, r"rotary dims.*= 3\) must be even"),
        ({"parallel_residual": True, "norm_placement": "post"}, r"parallel_residual.*norm_placement='pre'"),
        ({"norm_eps": 0.0}, r"norm_eps must be > 0"),
        ({"dtype": "int8"}, r"dtype must be one of.*'int8'"),
    ],
)
def test_bad_config(overrides, pattern):
    with pytest.raises(InterpError, match=pattern):
        DecoderConfig(**{**BASE, **overrides})


def test_unknown_hook_name(small):
    tokens = rand_tokens()
    ident = lambda a, hook: a
    with pytest.raises(InterpError, match=r"unknown hook name 'blocks.0.hook_resid_psot'"):
        small.add_hook("blocks.0.hook_resid_psot", ident)
    with pytest.raises(InterpError, match=r"unknown hook name 'blocks.9.attn.hook_z'"):
        small.run_with_hooks(tokens, fwd_hooks=[("blocks.9.attn.hook_z", ident)])
    with pytest.raises(InterpError, match=r"unknown hook name 'hook_resid'"), small.hooks(
        fwd_hooks=[("hook_resid", ident)]
    ):
        pass
    small.reset_hooks()


def test_unknown_hook_name_in_names_filter(small):
    """A typo in names_filter must not silently return an empty cache."""
    with pytest.raises(InterpError, match=r"blocks.0.hook_resid_psot"):
        small.run_with_cache(rand_tokens(), names_filter=["blocks.0.hook_resid_pre", "blocks.0.hook_resid_psot"])


@pytest.mark.parametrize(
    "kwargs,pattern",
    [
        ({"temperature": -0.5}, r"temperature must be finite and >= 0.*-0.5"),
        ({"temperature": float("nan")}, r"temperature must be finite and >= 0.*nan"),
        ({"temperature": float("inf")}, r"temperature must be finite and >= 0.*inf"),
        ({"top_k": 0}, r"top_k must be a positive integer.*0"),
        ({"top_k": 2.5}, r"top_k must be a positive integer.*2.5"),
        ({"top_p": 0.0}, r"top_p must be in \(0, 1\].*0.0"),
        ({"top_p": 1.5}, r"top_p must be in \(0, 1\].*1.5"),
        ({"min_p": -0.1}, r"min_p must be in \[0, 1\].*-0.1"),
        ({"min_p": 2.0}, r"min_p must be in \[0, 1\].*2.0"),
        ({"max_new_tokens": -1}, r"max_new_tokens must be a non-negative integer.*-1"),
    ],
)
def test_bad_sampling_parameters(small, kwargs, pattern):
    with pytest.raises(InterpError, match=pattern):
        generate(small, rand_tokens(batch=1, pos=3), **{"max_new_tokens": 2, **kwargs})
    if "max_new_tokens" not in kwargs:
        with pytest.raises(InterpError, match=pattern):
            sample_next(torch.zeros(1, V), **kwargs)


# --- checkpoints ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ["gpt2_like", "sinusoidal_post_relu_gqa_tied_nobias", "llama_like"])
def test_checkpoint_round_trip_is_exact(tmp_path, arch):
    model = make_model(**ARCHS[arch])
    model.tokenizer = word_level_tokenizer(V)
    folder = model.save(tmp_path / "ckpt")
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors", "tokenizer.json"]
    assert json.loads((folder / "config.json").read_text())["d_model"] == 32
    loaded = interp.load(str(folder))
    strip = lambda cfg: {k: v for k, v in cfg.to_dict().items() if k != "source"}  # source: provenance
    assert strip(loaded.cfg) == strip(model.cfg)
    tokens = rand_tokens(seed=13)
    with torch.no_grad():
        assert torch.equal(loaded(tokens), model(tokens))
    assert loaded.to_tokens("t3 t4").tolist() == [[3, 4]]
    with pytest.raises(InterpError, match="overwrite=True"):
        model.save(folder)
    model.save(folder, overwrite=True)


def _saved(tmp_path):
    model = make_model(**ARCHS["gpt2_like"])
    folder = model.save(tmp_path / "ckpt")
    return folder, load_file(str(folder / "model.safetensors"))


def test_checkpoint_with_missing_tensor_names_it(tmp_path):
    folder, state = _saved(tmp_path)
    del state["blocks.1.attn.W_K"]
    save_file(state, str(folder / "model.safetensors"))
    with pytest.raises(InterpError, match=r"Missing tensors: \['blocks.1.attn.W_K'\]"):
        interp.load(str(folder))


def test_checkpoint_with_wrong_shape_names_it(tmp_path):
    folder, state = _saved(tmp_path)
    state["blocks.0.mlp.W_in"] = torch.zeros(32, 100)
    save_file(state, str(folder / "model.safetensors"))
    with pytest.raises(InterpError, match=r"'blocks.0.mlp.W_in' has shape \(32, 100\).*\(32, 128\)"):
        interp.load(str(folder))


def test_checkpoint_with_unexpected_tensor_or_config_field(tmp_path):
    folder, state = _saved(tmp_path)
    state["blocks.0.attn.W_extra"] = torch.zeros(2)
    save_file(state, str(folder / "model.safetensors"))
    with pytest.raises(InterpError, match=r"unexpected tensors: \['blocks.0.attn.W_extra'\]"):
        interp.load(str(folder))
    cfg = json.loads((folder / "config.json").read_text())
    cfg["n_dragons"] = 8
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(InterpError, match=r"n_dragons"):
        interp.load(str(folder))


def test_load_of_nothing_is_clear(tmp_path):
    with pytest.raises(InterpError, match="no model called"):
        interp.load(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(InterpError, match="neither an interp checkpoint nor a transformers model"):
        interp.load(str(tmp_path / "empty"))
    with pytest.raises(InterpError, match="takes a zoo name"):
        interp.load(42)
