"""The universal path (interp.loading.universal) against the `transformers` modules it wraps.

For a Llama (forced onto the universal path), a Mamba (state-space, no attention) and Jamba (a hybrid with one
Mamba and one attention layer): every cached hook equals what independent forward hooks on the HF modules
see; attention patterns sum to 1 and equal HF's own eager attention weights (softmax(QKᵀ) with HF's mask);
patching a residual hook changes the logits exactly as patching the HF layer's output does.
"""

from __future__ import annotations

import copy

import pytest
import torch
from tiny_hf import tiny_model

import interp
from interp.errors import InterpError
from interp.loading.universal import UniversalModel

# arch -> (layers path, {hook suffix: child module name} per layer kind, final norm path)
LAYOUT = {
    "LlamaForCausalLM": ("model.layers", "model.norm"),
    "MambaForCausalLM": ("backbone.layers", "backbone.norm_f"),
    "JambaForCausalLM": ("model.layers", "model.final_layernorm"),
}
CHILDREN = {"self_attn": "hook_attn_out", "mixer": "hook_mixer_out", "mamba": "hook_mixer_out",
            "mlp": "hook_mlp_out", "feed_forward": "hook_mlp_out"}
TOKENS = torch.tensor([[5, 17, 3, 42, 8, 23, 11, 30], [7, 2, 19, 44, 6, 13, 50, 9]])


def _close(a, b, scale=1.0):
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5 * max(scale, 1.0))


def _wrap(arch):
    hf = tiny_model(arch)
    reference = copy.deepcopy(hf)  # the untouched HF model, eager attention
    model = interp.load(hf, path="universal")
    assert isinstance(model, UniversalModel) and model.cfg.path == "universal"
    return model, reference


def _record(reference, arch):
    """What the HF modules of ``reference`` receive and return, read with plain forward hooks."""
    layers_path, norm_path = LAYOUT[arch]
    seen, handles = {}, []

    def keep(name, what):
        def hook(mod, args, kwargs, out):
            x = args[0] if args else kwargs["hidden_states"]
            seen[name] = (x if what == "in" else out[0] if isinstance(out, tuple) else out).detach().clone()
        return hook

    handles.append(reference.get_input_embeddings().register_forward_hook(keep("hook_embed", "out"), with_kwargs=True))
    for i, layer in enumerate(reference.get_submodule(layers_path)):
        handles.append(layer.register_forward_hook(keep(f"blocks.{i}.hook_resid_pre", "in"), with_kwargs=True))
        handles.append(layer.register_forward_hook(keep(f"blocks.{i}.hook_resid_post", "out"), with_kwargs=True))
        for child, hook in CHILDREN.items():
            if hasattr(layer, child):
                handles.append(getattr(layer, child).register_forward_hook(keep(f"blocks.{i}.{hook}", "out"),
                                                                           with_kwargs=True))
    handles.append(reference.get_submodule(norm_path).register_forward_hook(keep("ln_final.hook_out", "out"),
                                                                            with_kwargs=True))
    with torch.no_grad():
        out = reference(input_ids=TOKENS, output_attentions=True)
    for h in handles:
        h.remove()
    return seen, out


@pytest.mark.parametrize("arch", list(LAYOUT))
def test_cached_hooks_equal_the_hf_modules(arch):
    model, reference = _wrap(arch)
    seen, out = _record(reference, arch)
    with torch.no_grad():
        logits, cache = model.run_with_cache(TOKENS)
    scale = float(out.logits.abs().max())
    _close(logits, out.logits, scale)
    _close(cache["hook_unembed"], out.logits, scale)
    for name, value in seen.items():
        assert name in cache.cache_dict, name
        _close(cache[name], value, float(value.abs().max()))
    kinds = model.cfg.layer_kinds
    assert kinds == {"LlamaForCausalLM": ["attention"] * 2, "MambaForCausalLM": ["mixer"] * 2,
                     "JambaForCausalLM": ["mixer", "attention"]}[arch]
    # HF's eager attention weights (its softmax(QKᵀ) with its own mask) are our patterns
    attentions = [a for a in (getattr(out, "attentions", None) or ()) if a is not None]
    attn_layers = [i for i, k in enumerate(kinds) if k == "attention"]
    assert len(attentions) == len(attn_layers)
    for i, weights in zip(attn_layers, attentions, strict=True):
        pattern = cache[f"blocks.{i}.attn.hook_pattern"]
        _close(pattern.sum(-1), torch.ones_like(pattern.sum(-1)))
        _close(pattern, weights)
        # and the pattern is softmax(scale·q·kᵀ + causal mask) of the cached (rotated) q and k
        q, k = cache[f"blocks.{i}.attn.hook_q"], cache[f"blocks.{i}.attn.hook_k"]
        k = k.repeat_interleave(q.shape[2] // k.shape[2], dim=2)
        scores = torch.einsum("bqhd,bkhd->bhqk", q, k) * q.shape[-1] ** -0.5
        causal = torch.ones(q.shape[1], q.shape[1], dtype=torch.bool).tril()
        _close(torch.softmax(scores.masked_fill(~causal, float("-inf")), -1), pattern)
        _close(cache[f"blocks.{i}.attn.hook_attn_scores"].masked_fill(~causal, 0), scores.masked_fill(~causal, 0))


@pytest.mark.parametrize("arch", list(LAYOUT))
def test_patching_a_resid_hook_equals_patching_the_hf_layer(arch):
    model, reference = _wrap(arch)
    layers = reference.get_submodule(LAYOUT[arch][0])
    delta = torch.randn(TOKENS.shape[1], model.cfg.d_model, generator=torch.Generator().manual_seed(3))

    def add_to_output(mod, args, out):
        return (out[0] + delta, *out[1:]) if isinstance(out, tuple) else out + delta

    handle = layers[0].register_forward_hook(add_to_output)
    with torch.no_grad():
        expected = reference(input_ids=TOKENS).logits
    handle.remove()
    with torch.no_grad():
        got = model.run_with_hooks(TOKENS, fwd_hooks=[("blocks.0.hook_resid_post", lambda x, hook: x + delta)])
        plain = model(TOKENS)
    _close(got, expected, float(expected.abs().max()))
    assert (got - plain).abs().max() > 1e-3  # the edit took effect
    # the same edit entering block 1 (resid_pre) is the same intervention
    with torch.no_grad():
        again = model.run_with_hooks(TOKENS, fwd_hooks=[("blocks.1.hook_resid_pre", lambda x, hook: x + delta)])
    _close(again, expected, float(expected.abs().max()))


def test_resid_mid_edit_is_an_edit_of_the_attention_output():
    model, reference = _wrap("LlamaForCausalLM")
    assert "blocks.0.hook_resid_mid" in model.hook_dict
    delta = torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(4))
    handle = reference.model.layers[0].self_attn.register_forward_hook(lambda m, a, out: (out[0] + delta, *out[1:]))
    with torch.no_grad():
        expected = reference(input_ids=TOKENS).logits
    handle.remove()
    with torch.no_grad():
        got = model.run_with_hooks(TOKENS, fwd_hooks=[("blocks.0.hook_resid_mid", lambda x, hook: x + delta)])
        _, cache = model.run_with_cache(TOKENS)
    _close(got, expected, float(expected.abs().max()))
    _close(cache["blocks.0.hook_resid_mid"], cache["blocks.0.hook_resid_pre"] + cache["blocks.0.hook_attn_out"])


def test_universal_and_native_paths_agree_on_llama():
    hf = tiny_model("LlamaForCausalLM")
    native = interp.load(copy.deepcopy(hf))
    universal = interp.load(hf, path="universal")
    assert native.cfg.source["family"] == "Llama" and universal.cfg.path == "universal"
    with torch.no_grad():
        _, n_cache = native.run_with_cache(TOKENS)
        _, u_cache = universal.run_with_cache(TOKENS)
    for name in ("blocks.0.hook_resid_pre", "blocks.1.hook_resid_mid", "blocks.1.hook_resid_post",
                 "blocks.0.hook_attn_out", "blocks.1.hook_mlp_out", "blocks.1.attn.hook_pattern", "blocks.0.attn.hook_z",
                 "blocks.0.attn.hook_v"):
        _close(u_cache[name], n_cache[name], float(n_cache[name].abs().max()))
    for q in ("q", "k"):  # HF hands attention the rotated q and k
        _close(u_cache[f"blocks.0.attn.hook_{q}"], n_cache[f"blocks.0.attn.hook_rot_{q}"])
    # the final norm's output, gain applied: TransformerLens' hook_normalized times the gain
    _close(u_cache["ln_final.hook_out"], n_cache["ln_final.hook_normalized"] * native.ln_final.w)


def test_analyzers_on_the_universal_path():
    from interp.analysis.causal import activation_patching, direct_logit_attribution
    from interp.analysis.logit_lens import logit_lens

    hf = tiny_model("LlamaForCausalLM")
    native = interp.load(copy.deepcopy(hf))
    universal = interp.load(hf, path="universal")
    clean, corrupted = TOKENS[:1], TOKENS[1:]
    kw = {"answer": 5, "wrong": 6, "bootstrap": 0}
    for where in ("resid_pre", "attn_out", "resid_mid"):
        u = activation_patching(universal, clean, corrupted, where=where, **kw)
        n = activation_patching(native, clean, corrupted, where=where, **kw)
        torch.testing.assert_close(torch.tensor(u.effect.to_numpy()), torch.tensor(n.effect.to_numpy()),
                                   rtol=1e-4, atol=1e-4)
    u, n = logit_lens(universal, TOKENS), logit_lens(native, TOKENS)
    assert len(u) == len(n)
    torch.testing.assert_close(torch.tensor(u.select_dtypes("number").to_numpy(dtype=float)),
                               torch.tensor(n.select_dtypes("number").to_numpy(dtype=float)), rtol=1e-4, atol=1e-4)
    with pytest.raises(InterpError, match="universal path"):
        direct_logit_attribution(universal, clean)


def test_state_space_model_hooks_and_capabilities():
    model, _ = _wrap("MambaForCausalLM")
    caps = model.capabilities
    assert caps.path == "universal" and "blocks.0.hook_mixer_out" in caps.hooks
    assert not any(".attn." in h for h in caps.hooks)
    with pytest.raises(InterpError, match="unknown hook name 'blocks.0.attn.hook_pattern'"):
        model.run_with_cache(TOKENS, names_filter="blocks.0.attn.hook_pattern")
    for what in (lambda: model.W_Q, lambda: model.W_out, lambda: model.process_weights()):
        with pytest.raises(InterpError, match="universal path") as err:
            what()
        assert "\n" not in str(err.value)


def test_refusals_are_one_line_naming_the_class():
    from transformers import T5Config, T5ForConditionalGeneration

    t5 = T5ForConditionalGeneration(T5Config(vocab_size=32, d_model=16, d_kv=4, d_ff=32, num_layers=1, num_heads=2))
    with pytest.raises(InterpError) as err:
        interp.load(t5)
    msg = str(err.value)
    assert "T5ForConditionalGeneration" in msg and "interp models --families" in msg and "\n" not in msg
    assert len(msg) < 300
    with pytest.raises(InterpError, match="MambaForCausalLM.*--families"):
        interp.load(tiny_model("MambaForCausalLM"), path="native")
    with pytest.raises(InterpError, match="path must be one of"):
        interp.load(tiny_model("MambaForCausalLM"), path="fast")


def test_report_and_families_listing_on_the_universal_path(tmp_path, capsys):
    """A researcher's walk-through: a transformers folder without a native row, through `interp report`."""
    from conftest import word_level_tokenizer

    from interp.cli import main
    from interp.loading.families import FAMILIES

    assert "HeliumForCausalLM" not in FAMILIES  # the point of the test: a family without a native row
    hf = tiny_model("HeliumForCausalLM")
    hf.config.architectures = ["HeliumForCausalLM"]
    hf.save_pretrained(tmp_path / "helium")
    word_level_tokenizer().save(str(tmp_path / "helium" / "tokenizer.json"))
    out = tmp_path / "report.md"
    assert main(["report", "t5 t9 t3 t4 t7 t5 t9", "--model", str(tmp_path / "helium"), "--format", "md",
                 "--out", str(out), "--corpus", "none"]) == 0
    text = out.read_text()
    assert "universal path (HeliumForCausalLM" in text and "## Logit lens" in text and "## Attention" in text
    capsys.readouterr()
    assert main(["models", "--families"]) == 0
    listing = capsys.readouterr().out
    assert "LlamaForCausalLM" in listing and "universal path" in listing


def test_a_hybrids_missing_attention_entry_is_one_clear_line():
    model, _ = _wrap("JambaForCausalLM")
    with torch.no_grad():
        _, cache = model.run_with_cache(TOKENS)
    assert cache["blocks.1.attn.hook_pattern"].shape == (2, 4, 8, 8)
    with pytest.raises(InterpError, match=r"'blocks.0.attn.hook_pattern' does not exist .* layer 0 is a mixer layer"):
        cache["blocks.0.attn.hook_pattern"]
