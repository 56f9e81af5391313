"""Our HookedDecoder against Hugging Face `transformers` on randomly initialised models of every family.

The reference is transformers' own eager attention implementation; our model must reproduce its logits to
1e-5 (fp32) with both our eager and our sdpa backend, its loss, and its folder format (save_pretrained).
Unsupported architectures must be refused with an error that names them.
"""

from __future__ import annotations

import pytest
import torch
from conftest import HF_VARIANTS, N_CTX, VOCAB, build_hf_model, hf_config, tokens_for

import interp
from interp.errors import InterpError

ATOL = 1e-5


def _hf_logits(hf, tokens):
    with torch.no_grad():
        return hf(tokens).logits


@pytest.mark.parametrize("backend", ["eager", "sdpa"])
@pytest.mark.parametrize("variant", sorted(HF_VARIANTS))
def test_logits_equal_transformers(hf_model_factory, variant, backend):
    hf = hf_model_factory(variant)
    model = interp.load(hf)
    tokens = tokens_for(batch=2, pos=17)
    with torch.no_grad():
        ours = model(tokens, attn_backend=backend)
    ref = _hf_logits(hf, tokens)
    assert ours.shape == ref.shape == (2, 17, VOCAB)
    assert ref.abs().max() > 0.5  # the comparison is between non-trivial numbers
    torch.testing.assert_close(ours, ref, atol=ATOL, rtol=0)


@pytest.mark.parametrize("variant", ["gpt2", "llama", "neox"])
def test_loss_equals_transformers(hf_model_factory, variant):
    hf = hf_model_factory(variant)
    model = interp.load(hf)
    tokens = tokens_for(batch=3, pos=10, seed=3)
    with torch.no_grad():
        ref = hf(tokens, labels=tokens).loss
        ours = model(tokens, return_type="loss")
    torch.testing.assert_close(ours, ref, atol=ATOL, rtol=0)


@pytest.mark.parametrize("variant", ["gpt2", "llama_biases_tied", "neox", "mistral"])
def test_config_read_from_hf(hf_model_factory, variant):
    """The config fields an analyst relies on are read, not defaulted."""
    hf = hf_model_factory(variant)
    c = hf.config
    cfg = interp.load(hf).cfg
    assert cfg.d_vocab == VOCAB and cfg.n_layers == 2 and cfg.n_ctx == N_CTX
    assert cfg.n_heads == 4
    expected_kv = getattr(c, "num_key_value_heads", None) or 4
    assert cfg.n_kv_heads == expected_kv
    if variant == "llama_biases_tied":
        assert cfg.d_head == 16 and cfg.rotary_base == 500.0 and cfg.tie_embeddings and cfg.mlp_bias
    if variant == "neox":
        assert cfg.parallel_residual and cfg.rotary_fraction == 0.25 and cfg.rotary_dim == 2
    if variant == "gpt2":
        assert cfg.positional == "learned" and cfg.act == "gelu_new" and cfg.norm == "layernorm"
    # TransformerLens weight shapes
    model = interp.load(hf)
    H, K, dh, d = cfg.n_heads, cfg.n_kv_heads, cfg.d_head, cfg.d_model
    assert model.W_Q.shape == (2, H, d, dh) and model.W_K.shape == (2, K, d, dh)
    assert model.W_O.shape == (2, H, dh, d) and model.W_U.shape == (d, VOCAB)


def test_gpt2_untied_head_is_used(hf_model_factory):
    """A GPT-2 whose lm_head is not tied to wte must use lm_head (the logits test covers it too; this names it)."""
    hf = hf_model_factory("gpt2_relu_untied")
    assert hf.lm_head.weight.data_ptr() != hf.transformer.wte.weight.data_ptr()
    model = interp.load(hf)
    torch.testing.assert_close(model.W_U, hf.lm_head.weight.T, atol=0, rtol=0)


@pytest.mark.parametrize("variant", ["gpt2", "llama", "neox"])
def test_load_save_pretrained_folder(tmp_path, variant):
    hf = build_hf_model(variant, seed=5)
    hf.save_pretrained(tmp_path)
    model = interp.load(str(tmp_path))
    tokens = tokens_for(batch=1, pos=9, seed=5)
    with torch.no_grad():
        torch.testing.assert_close(model(tokens), _hf_logits(hf, tokens), atol=ATOL, rtol=0)


def test_load_save_pretrained_folder_with_tokenizer_json(tmp_path):
    from conftest import word_level_tokenizer

    hf = build_hf_model("gpt2", seed=2)
    hf.save_pretrained(tmp_path)
    word_level_tokenizer().save(str(tmp_path / "tokenizer.json"))
    model = interp.load(tmp_path)
    assert model.tokenizer is not None
    tokens = model.to_tokens("t5 t6 t7")
    assert tokens.tolist() == [[1, 5, 6, 7]]  # GPT-2 prepends its BOS (id 1 here) by default, as TransformerLens
    assert model.to_tokens("t5 t6 t7", prepend_bos=False).tolist() == [[5, 6, 7]]
    torch.testing.assert_close(model("t5 t6 t7"), _hf_logits(hf, tokens), atol=ATOL, rtol=0)


def _tiny_unsupported(kind: str):
    import transformers

    torch.manual_seed(0)
    if kind == "bert":
        cfg = transformers.BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                                      intermediate_size=64, max_position_embeddings=N_CTX)
        return transformers.BertForMaskedLM(cfg)
    cfg = transformers.MambaConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=1)  # no attention at all
    return transformers.MambaForCausalLM(cfg)


def test_a_masked_lm_is_refused_in_one_line():
    with pytest.raises(InterpError) as err:
        interp.load(_tiny_unsupported("bert"))
    msg = str(err.value)
    assert "BertForMaskedLM" in msg and "not a causal language model" in msg and "\n" not in msg
    assert "interp models --families" in msg and len(msg) < 300  # a pointer, not the list of every family


def test_a_folder_without_a_native_row_opens_on_the_universal_path(tmp_path):
    import transformers

    torch.manual_seed(0)
    cfg = transformers.MambaConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, state_size=8)
    hf = transformers.MambaForCausalLM(cfg).eval()
    hf.save_pretrained(tmp_path)
    model = interp.load(str(tmp_path))
    assert model.cfg.path == "universal" and model.cfg.architecture == "MambaForCausalLM"
    tokens = torch.tensor([[1, 5, 9, 3]])
    with torch.no_grad():
        torch.testing.assert_close(model(tokens), hf(tokens).logits, rtol=1e-5, atol=1e-5)


def test_base_model_without_lm_head_is_refused():
    import transformers

    base = transformers.GPT2Model(hf_config("gpt2"))
    with pytest.raises(InterpError, match=r"GPT2Model.*not a causal language model.*ForCausalLM"):
        interp.load(base)


def test_unsupported_hf_settings_are_refused_natively_and_open_universally():
    """Settings of a native family that interp's model cannot reproduce: path='native' names the setting; the
    default path then opens the model on the universal path (HF's own modules), exactly."""
    import transformers

    small = {"vocab_size": VOCAB, "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 4}
    opt = transformers.OPTConfig(**small, ffn_dim=64, word_embed_proj_dim=16)  # project_in / project_out
    gpt2 = hf_config("gpt2")
    gpt2.scale_attn_by_inverse_layer_idx = True
    tokens = torch.tensor([[3, 7, 1, 9, 4]])
    for hf, setting in ((transformers.OPTForCausalLM(opt).eval(), "word_embed_proj_dim"),
                        (transformers.GPT2LMHeadModel(gpt2).eval(), "scale_attn_by_inverse_layer_idx")):
        with pytest.raises(InterpError, match=setting):
            interp.load(hf, path="native")
        with torch.no_grad():
            expected = hf(tokens).logits
        model = interp.load(hf)
        assert model.cfg.path == "universal" and setting in model.capabilities.not_offered["native path"]
        with torch.no_grad():
            torch.testing.assert_close(model(tokens), expected, rtol=1e-5, atol=1e-5)
