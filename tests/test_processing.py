"""TransformerLens' weight processing (fold_ln, center_writing_weights, center_unembed, fold_value_biases).

References: `transformers`' log-probabilities (processing must not change them), the exact identity that
direct logit attribution must satisfy once the norms are folded, and TransformerLens' own bridge after
``enable_compatibility_mode()`` (which applies the same processing to the same HF weights).
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from conftest import build_hf_model, tokens_for

import interp
from interp.errors import InterpError
from interp.model.config import DecoderConfig
from interp.model.transformer import HookedDecoder

ALL = {"fold_ln": True, "center_writing_weights": True, "center_unembed": True, "fold_value_biases": True}
ATOL = 1e-5


def _processed(variant):
    hf = build_hf_model(variant)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # center_writing_weights is skipped (with a warning) on RMSNorm models
        return hf, interp.load(hf, **ALL)


# Every tiny family variant: LayerNorm and RMSNorm, tied and untied heads, q/k/v biases with and without an
# output bias (Qwen2: a bias b_O must be created to take b_V), GQA/MQA, parallel residual, no attention biases.
VARIANTS = ["gpt2", "gpt2_relu_untied", "llama", "llama_biases_tied", "neox", "neox_sequential", "qwen2", "mistral"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_log_probs_unchanged_and_dla_adds_up(variant):
    hf, model = _processed(variant)
    tokens = tokens_for(batch=2, pos=11, seed=4)
    with torch.no_grad():
        ref = hf(tokens).logits
    assert model.cfg.normalization_type in ("LNPre", "RMSPre")
    assert model.cfg.weight_processing[0] == "fold_ln"
    logits, cache = model.run_with_cache(tokens)
    torch.testing.assert_close(logits.log_softmax(-1), ref.log_softmax(-1), atol=ATOL, rtol=1e-5)
    # center_unembed: logits move by one constant per position, nothing else
    shift = (logits - ref).detach()
    torch.testing.assert_close(shift, shift[..., :1].expand_as(shift), atol=ATOL, rtol=0)

    # Direct logit attribution of the logit difference a - b at the last position, two ways TL users do it.
    # The sum misses only b_U[a] - b_U[b] (a bias is no component of the residual stream).
    a, b = 5, 7
    want = (logits[:, -1, a] - logits[:, -1, b] - (model.b_U[a] - model.b_U[b])).detach()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a processed model must not warn
        stack = cache.decompose_resid(apply_ln=False, pos_slice=-1)
        attrs = cache.logit_attrs(stack, tokens=torch.tensor([a, a]), incorrect_tokens=torch.tensor([b, b]), pos_slice=-1)
        scaled = cache.decompose_resid(apply_ln=True, pos_slice=-1)
    direction = model.tokens_to_residual_directions(a) - model.tokens_to_residual_directions(b)
    assert want.abs().max() > 0.1  # a non-trivial difference
    torch.testing.assert_close(attrs.sum(0), want, atol=1e-4, rtol=0)
    torch.testing.assert_close((scaled @ direction).sum(0), want, atol=1e-4, rtol=0)


def test_unfolded_model_warns_once_and_its_dla_is_off():
    """Without fold_ln the same sum misses the final norm's gain: that is what the warning is for."""
    hf = build_hf_model("llama")
    model = interp.load(hf)
    tokens = tokens_for(batch=2, pos=9, seed=5)
    logits, cache = model.run_with_cache(tokens)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        stack = cache.decompose_resid(apply_ln=True, pos_slice=-1)
        cache.accumulated_resid(apply_ln=True)
    assert len([w for w in caught if "not folded" in str(w.message)]) == 1
    direction = model.tokens_to_residual_directions(5) - model.tokens_to_residual_directions(7)
    want = (logits[:, -1, 5] - logits[:, -1, 7]).detach()
    assert ((stack @ direction).sum(0) - want).abs().max() > 1e-2


def test_parameter_free_norms_do_not_warn():
    cfg = DecoderConfig(d_vocab=40, n_ctx=16, d_model=16, n_layers=1, n_heads=2)
    model = HookedDecoder(cfg)  # fresh norms: unit gain, zero bias, so TL's apply_ln is already exact
    _, cache = model.run_with_cache(torch.tensor([[1, 2, 3]]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cache.decompose_resid(apply_ln=True)


@pytest.mark.parametrize("variant", ["gpt2", "llama", "neox"])
def test_hooks_equal_the_bridge_in_compatibility_mode(variant, hf_tokenizer_dir, tmp_path):
    from transformer_lens.benchmarks.utils import compare_activation_dicts
    from transformer_lens.model_bridge import TransformerBridge
    from transformers import AutoTokenizer

    hf, model = _processed(variant)
    hf.config.save_pretrained(tmp_path)  # the bridge needs a local folder, never a hub id
    bridge = TransformerBridge.boot_transformers(
        str(tmp_path), hf_model=copy.deepcopy(hf), tokenizer=AutoTokenizer.from_pretrained(hf_tokenizer_dir), device="cpu"
    )
    bridge.enable_compatibility_mode(disable_warnings=True)  # TL's defaults: the four steps above
    tokens = tokens_for(batch=2, pos=9, seed=6)
    with torch.no_grad():
        ref_logits, ref_cache = bridge.run_with_cache(tokens)
        logits, cache = model.run_with_cache(tokens, attn_backend="eager")
    torch.testing.assert_close(logits, ref_logits, atol=ATOL, rtol=0)
    ours, theirs = dict(cache.items()), dict(ref_cache.items())
    shared = {k for k in set(ours) & set(theirs) if not k.endswith("hook_attn_scores")}  # −inf vs finfo.min
    assert {"blocks.1.hook_resid_post", "blocks.0.attn.hook_v", "ln_final.hook_normalized"} <= shared
    assert not compare_activation_dicts({k: ours[k] for k in shared}, {k: theirs[k] for k in shared}, atol=ATOL)
    torch.testing.assert_close(model.W_U, bridge.W_U, atol=ATOL, rtol=0)
    if model.cfg.attn_out_bias:
        torch.testing.assert_close(model.b_O, bridge.b_O, atol=ATOL, rtol=0)


def test_process_weights_method_is_idempotent_and_round_trips(tmp_path):
    """model.process_weights() (TL's defaults) twice equals once; the processed checkpoint reloads exactly."""
    hf = build_hf_model("neox_sequential")  # no attention biases: fold_ln must create them (and say so in cfg)
    model = interp.load(hf).process_weights()
    tokens = tokens_for(batch=2, pos=8, seed=7)
    once = model(tokens)
    assert model.cfg.attn_bias and model.blocks[0].ln1.w is None and model.blocks[0].attn.b_Q is not None
    torch.testing.assert_close(model.process_weights()(tokens), once, atol=0, rtol=0)
    model.save(tmp_path / "ckpt")
    again = interp.load(tmp_path / "ckpt")
    assert again.cfg.normalization_type == "LNPre" and again.cfg.weight_processing == model.cfg.weight_processing
    torch.testing.assert_close(again(tokens), once, atol=0, rtol=0)


def test_bf16_model_is_processed_in_fp32_and_stays_bf16():
    hf = build_hf_model("llama")
    ref = interp.load(hf, **{**ALL, "center_writing_weights": False})
    model = interp.load(hf.to(torch.bfloat16), fold_ln=True, center_unembed=True)
    assert model.W_U.dtype == torch.bfloat16 and model.blocks[0].attn.W_Q.dtype == torch.bfloat16
    # folded once in fp32 then rounded: within bf16 rounding of the fp32-processed weights
    torch.testing.assert_close(model.W_Q.float(), ref.W_Q.to(torch.bfloat16).float(), atol=0, rtol=2 ** -6)


def test_refusals():
    post = HookedDecoder(DecoderConfig(d_vocab=40, n_ctx=16, d_model=16, n_layers=1, n_heads=2, norm_placement="post"))
    with pytest.raises(InterpError, match="norm_placement"):
        post.process_weights()
    with pytest.raises(InterpError, match="refactor_factored_attn_matrices=True is not exact .* rotary"):
        interp.load(build_hf_model("llama"), refactor_factored_attn_matrices=True)
    gqa = HookedDecoder(DecoderConfig(d_vocab=40, n_ctx=16, d_model=16, n_layers=1, n_heads=4, n_kv_heads=2))
    before = gqa.W_Q.clone()
    with pytest.raises(InterpError, match="grouped keys"):
        gqa.process_weights(refactor_factored_attn_matrices=True)
    torch.testing.assert_close(gqa.W_Q, before, rtol=0, atol=0)  # refused before any step touched the weights
    with pytest.raises(InterpError, match="weight_processing"):
        DecoderConfig(d_vocab=40, n_ctx=16, d_model=16, n_layers=1, n_heads=2, weight_processing=["fold_everything"])


def _attn_state(model) -> dict:
    """Our attention weights under TransformerLens' state-dict names (zeros where a bias is absent)."""
    out = {}
    for l, block in enumerate(model.blocks):
        a = block.attn
        for name in ("W_Q", "W_K", "W_V", "W_O", "b_Q", "b_K", "b_V", "b_O"):
            t = getattr(a, name)
            if t is None:
                t = torch.zeros(a.W_O.shape[-1]) if name == "b_O" else torch.zeros(a.W_Q.shape[0], a.W_Q.shape[-1])
            out[f"blocks.{l}.attn.{name}"] = t.detach().clone()
    return out


def _components(A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """Rank-one terms A[:, :, i] ⊗ B[:, i, :] of a factored matrix [head, i, m, n]: sign-free, and unique per
    distinct singular value, so two canonical factorisations can be compared term by term."""
    return torch.einsum("hmi,hin->himn", A, B)


@pytest.mark.parametrize("variant", ["gpt2", "gpt2_relu_untied", "bias_free"])
def test_refactor_factored_attn_matrices_matches_transformer_lens(variant):
    """After TL's four steps, refactoring keeps every log-probability and every head's W_QK / W_OV, and gives
    the factors TransformerLens' own ProcessWeights.refactor_factored_attn_matrices computes from the same
    weights (compared per rank-one term: SVD signs are arbitrary)."""
    from transformer_lens.weight_processing import ProcessWeights

    if variant == "bias_free":  # no attention biases at all: the refactor must create them
        cfg = DecoderConfig(d_vocab=48, n_ctx=32, d_model=24, n_layers=2, n_heads=3, attn_bias=False)
        torch.manual_seed(0)
        model = HookedDecoder(cfg).eval()
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.1 * torch.randn_like(p))
        before = copy.deepcopy(model).process_weights(**ALL)
        model = copy.deepcopy(before)
    else:
        _, before = _processed(variant)
        model = copy.deepcopy(before)
    tokens = tokens_for(vocab=model.cfg.d_vocab)
    reference = ProcessWeights.refactor_factored_attn_matrices(
        _attn_state(before), type("Cfg", (), {"n_layers": model.cfg.n_layers, "positional_embedding_type": "standard"}))
    model.process_weights(**ALL, refactor_factored_attn_matrices=True)
    assert model.cfg.weight_processing[-1] == "refactor_factored_attn_matrices"
    with torch.no_grad():
        want, got = before(tokens).log_softmax(-1), model(tokens).log_softmax(-1)
    torch.testing.assert_close(got, want, rtol=0, atol=ATOL * want.abs().max())
    ours = _attn_state(model)
    for l in range(model.cfg.n_layers):
        p = f"blocks.{l}.attn."
        def q_eff(sd, p=p):  # [W_Q; b_Q]: the query map of [x, 1]
            return torch.cat([sd[p + "W_Q"], sd[p + "b_Q"][:, None]], 1)

        def k_eff(sd, p=p):
            return torch.cat([sd[p + "W_K"], sd[p + "b_K"][:, None]], 1)

        old = _attn_state(before)
        qk_old = q_eff(old) @ k_eff(old).transpose(-1, -2)
        scale = qk_old.abs().max()
        torch.testing.assert_close(q_eff(ours) @ k_eff(ours).transpose(-1, -2), qk_old, rtol=0, atol=1e-5 * scale)
        torch.testing.assert_close(ours[p + "W_V"] @ ours[p + "W_O"], old[p + "W_V"] @ old[p + "W_O"],
                                   rtol=0, atol=1e-5 * (old[p + "W_V"] @ old[p + "W_O"]).abs().max())
        # the canonical form: W_O a rotation (orthonormal rows), Q and K columns orthogonal with equal norms
        eye = torch.eye(ours[p + "W_O"].shape[1]).expand(ours[p + "W_O"].shape[0], -1, -1)
        torch.testing.assert_close(ours[p + "W_O"] @ ours[p + "W_O"].transpose(-1, -2), eye, rtol=0, atol=1e-5)
        gram_q = q_eff(ours).transpose(-1, -2) @ q_eff(ours)
        torch.testing.assert_close(gram_q, k_eff(ours).transpose(-1, -2) @ k_eff(ours), rtol=0, atol=1e-5 * scale)
        torch.testing.assert_close(gram_q, torch.diag_embed(gram_q.diagonal(dim1=-2, dim2=-1)), rtol=0,
                                   atol=1e-5 * scale)
        assert ours[p + "b_V"].abs().max() == 0
        # and term by term what TransformerLens computes
        torch.testing.assert_close(ours[p + "b_O"], reference[p + "b_O"], rtol=0, atol=1e-5)
        torch.testing.assert_close(_components(q_eff(ours), k_eff(ours).transpose(-1, -2)),
                                   _components(q_eff(reference), k_eff(reference).transpose(-1, -2)),
                                   rtol=0, atol=1e-4 * scale)
        torch.testing.assert_close(_components(ours[p + "W_V"], ours[p + "W_O"]),
                                   _components(reference[p + "W_V"], reference[p + "W_O"]), rtol=0, atol=1e-5)
