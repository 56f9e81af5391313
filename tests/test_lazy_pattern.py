"""Lazy attention patterns: a fused forward whose cached patterns equal the eager path's, built only on read.

The oracle is the eager attention path (scores, -inf mask, softmax) run on the *same* queries and keys: hooks
patch the fused run's cached ``hook_q`` / ``hook_k`` into an eager run (RoPE then applies identically), so
any difference is the pattern recomputation itself, not the ~1e-6 drift between fused and eager forwards.
"""

import os
import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import FAMILY_CONFIGS

from interp.errors import InterpError
from interp.kernels import fused_attention
from interp.model.config import DecoderConfig
from interp.model.lazy_pattern import (
    LazyActivationCache,
    RecordedAttention,
    attention_from_qk,
    attention_rows,
    n_by_n_tensors,
    run_with_lazy_cache,
)
from interp.model.transformer import HookedDecoder

N_LAYERS, N_HEADS, SEQ, BATCH = 2, 4, 21, 2
FAMILIES = FAMILY_CONFIGS


def make_model(family: str, dtype: str = "float32", n_ctx: int = 64) -> HookedDecoder:
    torch.manual_seed(0)
    # init_std 0.3 makes attention far from uniform, so a wrong pattern cannot hide behind 1/n.
    cfg = DecoderConfig(d_vocab=97, n_ctx=n_ctx, d_model=64, n_layers=N_LAYERS, n_heads=N_HEADS,
                        init_std=0.3, dtype=dtype, **FAMILIES[family])
    return HookedDecoder(cfg)


def tokens(n=SEQ, batch=BATCH, seed=1):
    return torch.randint(0, 97, (batch, n), generator=torch.Generator().manual_seed(seed))


def eager_on_same_input(model, toks, layer, cache):
    """The eager path's scores and pattern of ``layer`` computed from the cached run's own q and k."""
    got = {}
    prefix = f"blocks.{layer}.attn"

    def patch(x, hook):
        return cache[hook.name].to(x.dtype)

    def grab(x, hook):
        got[hook.name.split(".")[-1]] = x.detach().clone()

    model.run_with_hooks(toks, attn_backend="eager", return_type=None, fwd_hooks=[
        (f"{prefix}.hook_q", patch),
        (f"{prefix}.hook_k", patch),
        (f"{prefix}.hook_attn_scores", grab),
        (f"{prefix}.hook_pattern", grab),
    ])
    return got["hook_attn_scores"], got["hook_pattern"]


def max_diff(a, b):
    return (a.double() - b.double()).abs().max().item()


@pytest.mark.parametrize("family", list(FAMILIES))
def test_lazy_patterns_equal_eager(family):
    model, toks = make_model(family), tokens()
    _, cache = run_with_lazy_cache(model, toks)
    assert isinstance(cache, LazyActivationCache)
    for layer in range(N_LAYERS):
        ref_scores, ref_pattern = eager_on_same_input(model, toks, layer, cache)
        pattern = cache[f"blocks.{layer}.attn.hook_pattern"]
        scores = cache[f"blocks.{layer}.attn.hook_attn_scores"]
        assert pattern.shape == ref_pattern.shape == (BATCH, N_HEADS, SEQ, SEQ)
        assert max_diff(pattern, ref_pattern) <= 1e-6
        masked = torch.isneginf(ref_scores)
        assert torch.equal(torch.isneginf(scores), masked)
        assert max_diff(scores[~masked], ref_scores[~masked]) <= 1e-6 * ref_scores[~masked].abs().max().item()
        # probabilities: rows sum to one, the future gets exactly zero
        assert (pattern.double().sum(-1) - 1).abs().max().item() <= 1e-6
        assert torch.all(pattern[masked] == 0)
        assert pattern.dtype == ref_pattern.dtype

    # Scores read first: the pattern is then their softmax (no second matmul), and still the eager one.
    _, cache = run_with_lazy_cache(model, toks)
    for layer in range(N_LAYERS):
        cache[f"blocks.{layer}.attn.hook_attn_scores"]
        _, ref_pattern = eager_on_same_input(model, toks, layer, cache)
        assert max_diff(cache[f"blocks.{layer}.attn.hook_pattern"], ref_pattern) <= 1e-6


@pytest.mark.parametrize("family", list(FAMILIES))
def test_cache_matches_eager_cache(family):
    # Same keys in the same order as the eager cache; every other activation within fused-vs-eager rounding.
    model, toks = make_model(family), tokens()
    logits_lazy, lazy = run_with_lazy_cache(model, toks)
    logits_eager, eager = model.run_with_cache(toks, attn_backend="eager")
    assert list(lazy.keys()) == list(eager.keys())
    assert max_diff(logits_lazy, logits_eager) <= 1e-4
    for name in eager:
        if not name.endswith(("hook_pattern", "hook_attn_scores")):
            scale = max(1.0, eager[name].abs().max().item())
            assert max_diff(lazy[name], eager[name]) <= 1e-5 * scale, name


def test_cache_holds_no_n_by_n_until_read():
    n = 120
    model, toks = make_model("llama", n_ctx=n), tokens(n=n)
    _, cache = run_with_lazy_cache(model, toks, names_filter=lambda n: n.endswith("hook_pattern"))
    assert n_by_n_tensors(cache, n) == []
    held = sum(t.numel() * t.element_size() for t in cache.cache_dict.stored_tensors())
    one_layer_of_patterns = BATCH * N_HEADS * n * n * 4
    # q, k (and lse) of both layers: O(layers * n * d), here under half of one layer's O(heads * n^2) patterns
    assert held < 0.5 * one_layer_of_patterns
    assert not cache.is_built("blocks.0.attn.hook_pattern")

    cache["blocks.0.attn.hook_pattern"]  # the first read builds that entry, and only that one
    assert n_by_n_tensors(cache, n) == [(BATCH, N_HEADS, n, n)]
    assert cache.is_built("blocks.0.attn.hook_pattern") and not cache.is_built("blocks.1.attn.hook_pattern")
    assert cache["blocks.0.attn.hook_pattern"] is cache["blocks.0.attn.hook_pattern"]  # kept, not rebuilt


def test_transformer_lens_methods_do_not_build_patterns():
    model, toks = make_model("gpt2"), tokens()
    _, cache = run_with_lazy_cache(model, toks)
    resid, labels = cache.accumulated_resid(return_labels=True)
    assert resid.shape[0] == len(labels)
    sliced = cache.apply_slice_to_batch_dim(1)
    cache.to("cpu")
    assert n_by_n_tensors(cache, SEQ) == [] and n_by_n_tensors(sliced, SEQ) == []
    full = cache["pattern", 1]  # TransformerLens' shorthand
    assert max_diff(sliced["blocks.1.attn.hook_pattern"], full[1]) <= 1e-6  # probabilities: absolute = relative
    assert sliced["blocks.1.attn.hook_pattern"].shape == (N_HEADS, SEQ, SEQ)


def test_chosen_heads_and_query_rows():
    model, toks = make_model("llama"), tokens()
    _, cache = run_with_lazy_cache(model, toks)
    rows = cache.pattern(1, heads=[0, 3], queries=[0, 5, -1])
    scores = cache.attention_scores(1, heads=2, queries=slice(3, 9), batch=1)
    assert n_by_n_tensors(cache, SEQ) == []  # the partial reads built nothing in the cache
    full = cache["blocks.1.attn.hook_pattern"]
    # a row subset is a different matmul shape: BLAS may round differently in the last bit
    assert max_diff(rows, full[:, [0, 3]][:, :, [0, 5, SEQ - 1]]) <= 1e-6
    full_scores = cache["blocks.1.attn.hook_attn_scores"]
    torch.testing.assert_close(scores, full_scores[[1]][:, [2], 3:9], rtol=1e-5, atol=1e-6)
    # the same API on an already built entry
    assert max_diff(cache.pattern(1, heads=[0, 3], queries=[0, 5, -1]), rows) <= 1e-6
    with pytest.raises(InterpError, match="heads must lie in"):
        cache.pattern(0, heads=[4])
    with pytest.raises(InterpError, match="layer must be an int"):
        cache.pattern(2)
    _, partial = run_with_lazy_cache(model, toks, names_filter="blocks.0.attn.hook_pattern")
    with pytest.raises(InterpError, match="names_filter"):
        partial.pattern(1)


def test_remove_batch_dim_and_pos_slice_match_eager():
    model, toks = make_model("neox"), tokens(batch=1)
    _, lazy = run_with_lazy_cache(model, toks, remove_batch_dim=True)
    _, eager = model.run_with_cache(toks, attn_backend="eager", remove_batch_dim=True)
    assert lazy["blocks.0.attn.hook_pattern"].shape == eager["blocks.0.attn.hook_pattern"].shape
    assert max_diff(lazy["blocks.0.attn.hook_pattern"], eager["blocks.0.attn.hook_pattern"]) <= 1e-6
    assert lazy.pattern(0, heads=1).shape == (1, SEQ, SEQ)

    # (TransformerLens' pos_slice slices hook_rot_q/k along the head dim, so take a model without them.)
    model = make_model("gpt2")
    _, lazy = run_with_lazy_cache(model, toks, pos_slice=[2, 7, 20])
    _, eager = model.run_with_cache(toks, attn_backend="eager", pos_slice=[2, 7, 20])
    assert lazy["blocks.0.attn.hook_pattern"].shape == (1, 4, 3, SEQ)
    assert eager["blocks.0.attn.hook_pattern"].shape == (1, 4, 3, SEQ)
    assert max_diff(lazy["blocks.0.attn.hook_pattern"], eager["blocks.0.attn.hook_pattern"]) <= 1e-6
    assert max_diff(lazy.pattern(0, queries=[1]), eager["blocks.0.attn.hook_pattern"][:, :, [1]]) <= 1e-6


def _edit(pattern, hook):
    # Move a third of every row's mass onto its first key (BOS-sink style): an edit that must change output.
    edited = pattern * (2 / 3)
    edited[..., 0] += 1 / 3
    return edited


def test_edit_hook_on_pattern_acts_as_on_eager():
    model, toks = make_model("llama"), tokens()
    name = "blocks.1.attn.hook_pattern"
    seen, again = {}, {}

    def grab(store):
        def hook(x, hook):
            store[hook.name] = x.detach().clone()
        return hook

    def patch(x, hook):  # the eager run gets the default run's exact q, k, v for the edited layer
        return seen[hook.name]

    qkv = [f"blocks.1.attn.hook_{x}" for x in "qkv"]
    plain = model(toks)
    # default backend: layer 0 fused, layer 1 forced eager by the edit
    edited = model.run_with_hooks(toks, fwd_hooks=[(name, _edit), ("blocks.1.hook_attn_out", grab(seen))]
                                  + [(n, grab(seen)) for n in qkv])
    model.run_with_hooks(toks, attn_backend="eager", fwd_hooks=[(name, _edit), ("blocks.1.hook_attn_out",
                         grab(again))] + [(n, patch) for n in qkv])
    assert max_diff(edited, plain) > 1e-2  # the edit took effect
    out, ref = seen["blocks.1.hook_attn_out"], again["blocks.1.hook_attn_out"]
    assert max_diff(out, ref) <= 1e-6 * ref.abs().max().item()  # and acted exactly as on the eager path
    edited_eager = model.run_with_hooks(toks, fwd_hooks=[(name, _edit)], attn_backend="eager")
    assert max_diff(edited, edited_eager) <= 1e-5 * edited_eager.abs().max().item()

    # A cache taken while the edit is attached stores layer 1's edited pattern; layer 0 stays lazy.
    with model.hooks(fwd_hooks=[(name, _edit)]):
        logits, cache = run_with_lazy_cache(model, toks)
    # not bit-equal: a cache keeps tensors alive, moving allocations, and MKL rounding follows alignment
    assert max_diff(logits, edited) <= 1e-5 * edited.abs().max().item()
    assert cache.is_built(name) and not cache.is_built("blocks.0.attn.hook_pattern")
    assert torch.all(cache[name][..., 0] >= 1 / 3 - 1e-6)


def test_incl_bwd_caches_patterns_eagerly():
    model, toks = make_model("gpt2"), tokens()
    _, cache = run_with_lazy_cache(model, toks, return_type="loss", incl_bwd=True,
                                   names_filter=lambda n: "attn.hook_pattern" in n)
    assert cache.is_built("blocks.1.attn.hook_pattern")
    assert cache["blocks.1.attn.hook_pattern_grad"].shape == (BATCH, N_HEADS, SEQ, SEQ)


def test_half_precision_model_matches_eager():
    model, toks = make_model("gpt2", dtype="bfloat16"), tokens()
    _, cache = run_with_lazy_cache(model, toks)
    for layer in range(N_LAYERS):
        _, ref = eager_on_same_input(model, toks, layer, cache)
        got = cache[f"blocks.{layer}.attn.hook_pattern"]
        assert got.dtype == torch.bfloat16
        assert max_diff(got, ref) <= 4e-3  # one bf16 rounding of probabilities <= 1


def test_recompute_with_kernel_lse_and_refusal():
    # With the fused kernel's lse (what the model records), the rebuilt pattern is the eager softmax; an lse
    # that does not belong to these q/k is refused, not silently renormalised.
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 4, 30, 16, generator=g) * 2
    k = torch.randn(2, 2, 30, 16, generator=g) * 2
    v = torch.randn(2, 2, 30, 16, generator=g)
    _, lse = fused_attention(q, k, v, causal=True, scale=0.25)
    rec = RecordedAttention(q, k, lse, 0.25)
    got = attention_from_qk(rec, tile_elems=2 * 4 * 30 * 7)  # several tiles, ragged last one
    scores = (q @ k.repeat_interleave(2, 1).transpose(-1, -2)).double() * 0.25
    scores = scores.masked_fill(torch.ones(30, 30, dtype=torch.bool).triu(1), float("-inf"))
    assert max_diff(got, torch.softmax(scores, -1)) <= 1e-6
    assert max_diff(got, attention_from_qk(RecordedAttention(q, k, None, 0.25))) <= 1e-6
    with pytest.raises(InterpError, match="does not normalise"):
        attention_from_qk(RecordedAttention(q, k, lse + 0.5, 0.25))

    # bf16 with large scores: the eager path rounds the scores to bf16, the kernel's lse does not; the
    # rebuilt pattern follows the eager arithmetic and the check allows for that rounding.
    qb, kb, vb = (q * 4).bfloat16(), (k * 4).bfloat16(), v.bfloat16()
    _, lse_b = fused_attention(qb, kb, vb, causal=True, scale=0.25)
    got = attention_from_qk(RecordedAttention(qb, kb, lse_b, 0.25))
    scores = (qb @ kb.repeat_interleave(2, 1).transpose(-1, -2)) * 0.25  # eager: bf16 matmul, then scale
    scores = scores.masked_fill(torch.ones(30, 30, dtype=torch.bool).triu(1), float("-inf"))
    assert max_diff(got, torch.softmax(scores.float(), -1).bfloat16()) <= 4e-3


def test_attention_rows_equal_eager_rows():
    model, toks = make_model("llama"), tokens()
    _, eager = model.run_with_cache(toks, attn_backend="eager")
    rows = attention_rows(model, toks, layer=1, head=3, queries=[0, 9, -1], batch=1)
    assert rows.shape == (3, SEQ)
    assert max_diff(rows, eager["blocks.1.attn.hook_pattern"][1, 3, [0, 9, SEQ - 1]]) <= 1e-5
    one = attention_rows(model, toks, layer=-1, head=0, queries=4)
    assert one.shape == (SEQ,) and torch.all(one[5:] == 0)
    with pytest.raises(InterpError, match="head must be an int"):
        attention_rows(model, toks, layer=0, head=4)
    with model.hooks(fwd_hooks=[("blocks.0.attn.hook_pattern", _edit)]), \
            pytest.raises(InterpError, match="force the eager"):
        attention_rows(model, toks, layer=0, head=0)


def test_attention_rows_8k_context_without_n_by_n_memory():
    # In a fresh process so the peak-RSS reading belongs to this call alone. One head's fp32 [8k, 8k] pattern
    # is 256 MB; the whole call must stay well under that.
    code = textwrap.dedent("""
        import resource, torch
        from interp.model.config import DecoderConfig
        from interp.model.transformer import HookedDecoder
        from interp.model.lazy_pattern import attention_rows
        n = 8192
        torch.manual_seed(0)
        cfg = DecoderConfig(d_vocab=97, n_ctx=n, d_model=64, n_layers=2, n_heads=4, positional="rotary",
                            init_std=0.2)
        model = HookedDecoder(cfg)
        toks = torch.randint(0, 97, (1, n))
        model(toks[:, :16])  # warm up allocator and kernels outside the measurement
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        rows = attention_rows(model, toks, layer=1, head=2, queries=[0, 4095, n - 1])
        grew_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
        assert rows.shape == (3, n)
        assert (rows.double().sum(-1) - 1).abs().max() < 1e-5
        assert torch.all(rows[1, 4096:] == 0)
        print(grew_mb)
    """)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]))
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300,
                         check=False)
    assert res.returncode == 0, res.stderr[-2000:]
    grew_mb = float(res.stdout.strip().splitlines()[-1])
    assert grew_mb < 128, f"peak memory grew {grew_mb:.0f} MB: something built an n x n matrix"
