"""Models across devices (accelerate device maps, CPU and disk offload) and memory estimates.

References: the same model in one place (logits, every cached hook, lazily rebuilt patterns, and the effect
of editing hooks must match exactly), and, for the memory estimate, the bytes a real ``run_with_cache``
holds (unique storages) and the parameters' own sizes.
"""

from __future__ import annotations

import copy

import pandas as pd
import pytest
import torch
from conftest import FAMILY_CONFIGS

import interp
from interp.errors import InterpError
from interp.loading.placement import dispatch
from interp.model.config import DecoderConfig
from interp.model.memory import _filter, estimate_memory
from interp.model.transformer import HookedDecoder

SPLIT = {"embed": "cpu", "blocks.0": "cpu", "blocks.1": "disk", "blocks.2": "cpu", "ln_final": "disk",
         "unembed": "disk"}


pytestmark = pytest.mark.usefixtures("one_thread")


def make(family="llama", **kw):
    torch.manual_seed(0)
    cfg = DecoderConfig(d_vocab=40, n_ctx=16, d_model=16, n_layers=3, n_heads=4, d_mlp=32, init_std=0.3,
                        **{**FAMILY_CONFIGS[family], **kw})
    return HookedDecoder(cfg).eval()


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_offloaded_model_gives_the_same_logits_cache_and_hook_edits(tmp_path, family):
    ref = make(family)
    split = {**SPLIT, **({"pos_embed": "disk"} if family == "gpt2" else {})}
    placed = dispatch(copy.deepcopy(ref), split, offload_folder=tmp_path / "offload")
    assert placed.blocks[1].mlp.W_in.device.type == "meta"  # really not in memory: streamed from disk
    assert placed.hf_device_map["blocks.1"] == "disk" and placed.device == torch.device("cpu")
    tokens = torch.randint(40, (2, 12))
    with torch.no_grad():
        logits, cache = ref.run_with_cache(tokens)
        logits2, cache2 = placed.run_with_cache(tokens, device="cpu")
    torch.testing.assert_close(logits2, logits, rtol=0, atol=0)
    assert set(cache2.keys()) == set(cache.keys())
    for name in cache:  # every hook, patterns rebuilt lazily from the offloaded layer's q and k
        assert cache2[name].device.type == "cpu"
        torch.testing.assert_close(cache2[name], cache[name], rtol=0, atol=0, msg=name)
    torch.testing.assert_close(cache2.pattern(1, heads=[2], queries=[-1]), cache.pattern(1, heads=[2], queries=[-1]))
    torch.testing.assert_close(cache2.accumulated_resid(apply_ln=True), cache.accumulated_resid(apply_ln=True))

    def ablate(x, hook):  # an edit inside the disk-offloaded block
        return torch.zeros_like(x)

    def uniform(p, hook):  # an edit of the pattern (forces the eager path) inside the disk block
        return torch.tril(torch.ones_like(p)) / torch.arange(1, p.shape[-1] + 1, device=p.device)[:, None]

    for name, fn in (("blocks.1.hook_mlp_out", ablate), ("blocks.1.attn.hook_pattern", uniform)):
        with torch.no_grad():
            want = ref.run_with_hooks(tokens, fwd_hooks=[(name, fn)])
            got = placed.run_with_hooks(tokens, fwd_hooks=[(name, fn)])
        torch.testing.assert_close(got, want, rtol=0, atol=0)
        assert (got - logits).abs().max() > 1e-3  # the edit took effect


def test_load_with_device_map_auto_and_max_memory(tmp_path):
    ref = make("gpt2")
    ref.save(tmp_path / "model")
    tokens = torch.randint(40, (1, 10))
    block = sum(p.numel() * 4 for p in ref.blocks[0].parameters())
    with pytest.raises(InterpError, match="offload_folder"):
        interp.load(tmp_path / "model", device_map="auto", max_memory={"cpu": 2 * block})
    placed = interp.load(tmp_path / "model", device_map="sequential", max_memory={"cpu": 2 * block},
                         offload_folder=tmp_path / "off")
    assert "disk" in placed.hf_device_map.values() and "cpu" in placed.hf_device_map.values()
    with torch.no_grad():
        torch.testing.assert_close(placed(tokens), ref(tokens), rtol=0, atol=0)
    with pytest.raises(InterpError, match="device_map"):
        interp.load(tmp_path / "model", device_map={"blocks.9": "cpu"})
    with pytest.raises(InterpError, match="device_map"):
        interp.load(tmp_path / "model", device_map="everywhere")
    with pytest.raises(InterpError, match="max_memory"):
        interp.load(tmp_path / "model", max_memory={"cpu": 100})
    tied = make("gpt2", tie_embeddings=True)
    with pytest.raises(InterpError, match="ties"):
        dispatch(tied, {"embed": "disk", "": "cpu"}, offload_folder=tmp_path / "t")


@pytest.mark.parametrize("kw", [{}, {"family": "llama"}, {"attn_backend": "eager"},
                                {"family": "neox", "positional": "none"}, {"use_attn_result": True}])
@pytest.mark.parametrize("hooks", ["all", ["hook_resid_post", "blocks.1.attn.hook_pattern"], None,
                                   ["blocks.0.attn.hook_pattern", "blocks.0.attn.hook_attn_scores", "mlp.hook_post"]])
def test_estimate_memory_matches_a_real_cache(kw, hooks):
    kw = dict(kw)
    m = make(kw.pop("family", "gpt2"), **kw)
    tokens = torch.randint(40, (3, 13))
    est = estimate_memory(m.cfg, tokens, hooks)
    assert est.weights == sum(t.numel() * t.element_size() for t in [*m.parameters(), *m.buffers()])
    with torch.no_grad():
        _, cache = m.run_with_cache(tokens, names_filter=_filter(hooks))
    held = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in cache.cache_dict.stored_tensors()}
    assert est.cache == sum(held.values())
    assert set(est.per_hook.hook) == set(cache.keys())
    assert est.forward >= 3 * 13 * 40 * 4  # at least the logits


def test_estimate_memory_of_long_contexts_and_bad_input():
    cfg = DecoderConfig(d_vocab=50_000, n_ctx=32_768, d_model=4096, n_layers=32, n_heads=32, n_kv_heads=8,
                        d_mlp=14_336, positional="rotary", norm="rmsnorm", act="silu", gated=True,
                        attn_bias=False, mlp_bias=False, dtype="bfloat16")
    lazy = estimate_memory(cfg, 32_768, "hook_pattern")
    eager = estimate_memory(cfg, 32_768, "hook_pattern", lazy_patterns=False)
    assert eager.cache == 32 * 32 * 32_768**2 * 2  # layers x heads x n^2 bf16
    assert lazy.cache == 32 * (32_768 * (32 + 8) * 128 * 2 + 32 * 32_768 * 4)  # q, k, fp32 lse per layer
    assert 7.0e9 * 2 < lazy.weights < 8.0e9 * 2 and "GiB" in str(lazy)
    for bad, match in ((0, "tokens"), ((1, 40_000), "tokens"), ("x", "tokens")):
        with pytest.raises(InterpError, match=match):
            estimate_memory(cfg, bad)
    with pytest.raises(InterpError, match="config"):
        estimate_memory({"d_model": 3}, 4)


def test_corpus_scan_on_an_offloaded_model_equals_the_plain_model(tmp_path):
    from interp.analysis.neurons import model_fingerprint, scan_top_contexts

    ref = make("llama")
    placed = dispatch(copy.deepcopy(ref), SPLIT, offload_folder=tmp_path / "offload")
    # offloaded weights are read back for the fingerprint: the same weights, wherever they live
    assert model_fingerprint(placed) == model_fingerprint(ref)
    docs = [torch.randint(40, (n,)) for n in (5, 20, 9)]
    want = scan_top_contexts(ref, docs, k=2, seq_len=8, overlap=2, progress=False)
    got = scan_top_contexts(placed, docs, k=2, seq_len=8, overlap=2, progress=False)
    pd.testing.assert_frame_equal(got, want)
