"""A TransformerLens tutorial runs unchanged with ``from interp import HookedTransformer`` and gives TL's numbers.

The snippets below are what TL's Main Demo and Exploratory Analysis Demo do (written for this project): tokens
and string tokens (tuples too), ``run_with_cache`` with ``decompose_resid`` / ``logit_attrs`` / ``stack_head_results``,
direct logit attribution, a head ablation through ``run_with_hooks``, OV/QK circuits and composition scores,
``generate`` / ``generate_stream``. Each runs on interp's ``HookedTransformer.from_pretrained`` and on
TransformerLens' reference built from the same tiny GPT-2 weights, offline:

* TransformerLens 3.x: its own ``HookedTransformer`` (built the way its ``from_pretrained`` does: config, converted
  state dict, ``load_and_process_state_dict`` with TL's defaults);
* TransformerLens 4.x (no HookedTransformer): ``TransformerBridge`` in ``enable_compatibility_mode()``, TL's own
  HookedTransformer-equivalent numerics.

Every output must be equal (<= 1e-5).
"""

from __future__ import annotations

import inspect

import pytest
import torch

import interp
from interp import HookedTransformer
from interp.errors import InterpError

ATOL = 1e-5
PROMPT = "When John and Mary went to the store, John gave a drink to"
PROMPTS = ("When John and Mary went to the store, John gave a drink to", "When Tom and Moses went to the park, Tom")
CORPUS = [PROMPT + " Mary", PROMPTS[1] + " gave a ball to Moses", "the cat sat on the mat"] * 20
TL_DEFAULTS = {"fold_ln": True, "center_writing_weights": True, "center_unembed": True, "fold_value_biases": True,
               "refactor_factored_attn_matrices": False, "dtype": "float32", "n_devices": 1, "move_to_device": True}


def tl_hooked_transformer():
    """TransformerLens 3.x's HookedTransformer class, or None under 4.x (which removed it)."""
    try:
        from transformer_lens import HookedTransformer as TLHookedTransformer
    except ImportError:
        return None
    return TLHookedTransformer


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A tiny noise-perturbed GPT-2 and a byte-level BPE tokenizer (<|endoftext|> = id 0) in one local folder."""
    import transformers
    from transformers import PreTrainedTokenizerFast

    from interp.tokenize import EOS_TOKEN, train_tokenizer

    tok = PreTrainedTokenizerFast(tokenizer_object=train_tokenizer(CORPUS, vocab_size=300), bos_token=EOS_TOKEN,
                                  eos_token=EOS_TOKEN, pad_token=EOS_TOKEN)
    config = transformers.GPT2Config(vocab_size=tok.backend_tokenizer.get_vocab_size(), n_positions=64, n_embd=32,
                                     n_layer=2, n_head=4, bos_token_id=0, eos_token_id=0)
    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(config).eval()
    with torch.no_grad():  # off the default init (unit gains, zero biases), so folding really has work to do
        for p in hf.parameters():
            p.add_(0.1 * torch.randn_like(p))
    path = tmp_path_factory.mktemp("tl_swap")
    hf.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def reference(folder, processed: bool = True):
    """TransformerLens' model of the folder's weights (see the module docstring), with or without TL's processing."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    hf = AutoModelForCausalLM.from_pretrained(folder).eval()
    TLHookedTransformer = tl_hooked_transformer()
    if TLHookedTransformer is None:
        from transformer_lens.model_bridge import TransformerBridge

        bridge = TransformerBridge.boot_transformers(str(folder), hf_model=hf, device="cpu")
        if processed:
            bridge.enable_compatibility_mode(disable_warnings=True)
        return bridge
    from transformer_lens import HookedTransformerConfig
    from transformer_lens.pretrained.weight_conversions import convert_gpt2_weights

    c = hf.config
    cfg = HookedTransformerConfig(
        n_layers=c.n_layer, d_model=c.n_embd, n_heads=c.n_head, d_head=c.n_embd // c.n_head, d_mlp=4 * c.n_embd,
        d_vocab=c.vocab_size, n_ctx=c.n_positions, act_fn="gelu_new", normalization_type="LN",
        eps=c.layer_norm_epsilon, original_architecture="GPT2LMHeadModel", default_prepend_bos=True)
    model = TLHookedTransformer(cfg, tokenizer=AutoTokenizer.from_pretrained(folder), move_to_device=False)
    model.load_and_process_state_dict(convert_gpt2_weights(hf, cfg), fold_ln=processed,
                                      center_writing_weights=processed, center_unembed=processed,
                                      fold_value_biases=processed)
    return model.eval()


@pytest.fixture(scope="module")
def pair(folder):
    """(interp's HookedTransformer.from_pretrained, TransformerLens' reference), both with TL's defaults."""
    return HookedTransformer.from_pretrained(str(folder)), reference(folder)


def close(a, b):
    torch.testing.assert_close(a, b, atol=ATOL, rtol=1e-5)


# --- the entry point ------------------------------------------------------------------------------------------
def test_from_pretrained_has_transformer_lens_defaults(folder):
    ours = inspect.signature(HookedTransformer.from_pretrained).parameters
    TLHookedTransformer = tl_hooked_transformer()
    expected = TL_DEFAULTS
    if TLHookedTransformer is not None:  # under TL 3.x, read the defaults from TL itself
        tl = inspect.signature(TLHookedTransformer.from_pretrained).parameters
        expected = {k: p.default for k, p in tl.items() if p.default is not inspect.Parameter.empty}
        assert set(tl) <= set(ours)  # every TL argument is accepted (some refused with a clear error)
    for name, default in expected.items():
        assert ours[name].default == default, name
    no_proc = inspect.signature(HookedTransformer.from_pretrained_no_processing).parameters
    for step in ("fold_ln", "center_writing_weights", "center_unembed", "fold_value_biases"):
        assert no_proc[step].default is False
    model = HookedTransformer.from_pretrained(str(folder))
    assert isinstance(model, interp.HookedDecoder)
    assert model.cfg.weight_processing == ["fold_ln", "center_writing_weights", "center_unembed", "fold_value_biases"]
    assert interp.load(folder).cfg.weight_processing == []  # interp.load keeps its own defaults
    assert HookedTransformer.from_pretrained_no_processing(str(folder)).cfg.weight_processing == []
    with pytest.raises(InterpError, match="checkpoint_index"):
        HookedTransformer.from_pretrained(str(folder), checkpoint_index=3)


# --- tokens ---------------------------------------------------------------------------------------------------
def test_tokens_as_in_transformer_lens(pair):
    ours, ref = pair
    names = ("  John", " Moses")  # a tuple, as TL accepts
    assert torch.equal(ours.to_tokens(names), ref.to_tokens(names))
    assert torch.equal(ours.to_tokens(PROMPTS, prepend_bos=False), ref.to_tokens(PROMPTS, prepend_bos=False))
    assert ours.to_str_tokens(PROMPT) == ref.to_str_tokens(PROMPT)
    assert ours.to_str_tokens(list(names)) == ref.to_str_tokens(list(names))
    # TL's tokenizer prepends BOS on encode; positions in a tutorial depend on it
    assert ours.tokenizer.encode(" John") == ref.tokenizer.encode(" John")
    assert ours.tokenizer.encode(" John")[0] == 0
    assert ours.tokenizer(list(PROMPTS), padding=True)["input_ids"] == ref.tokenizer(list(PROMPTS), padding=True)["input_ids"]
    assert ours.to_single_token(" John") == ref.to_single_token(" John")
    assert ours.get_token_position(" John", PROMPT, mode="last") == ref.get_token_position(" John", PROMPT, mode="last")
    assert ours.to_string(ours.to_tokens(PROMPT)) == ref.to_string(ref.to_tokens(PROMPT))


# --- logits, cache, direct logit attribution ---------------------------------------------------------------------
@torch.no_grad()
def test_cache_and_direct_logit_attribution(pair):
    ours, ref = pair
    tokens = ref.to_tokens(PROMPT)
    logits, cache = ours.run_with_cache(tokens)
    ref_logits, ref_cache = ref.run_with_cache(tokens)
    close(logits, ref_logits)
    close(ours(tokens, return_type="loss"), ref(tokens, return_type="loss"))
    for name in ("hook_embed", "hook_pos_embed", "blocks.0.attn.hook_pattern", "blocks.1.attn.hook_z",
                 "blocks.1.ln2.hook_normalized", "blocks.1.hook_mlp_out", "ln_final.hook_scale"):
        close(cache[name], ref_cache[name])
    # the logit difference " Mary" - " John" at the last position, split by component (TL's Exploratory demo)
    answers = ours.to_tokens([" Mary", " John"], prepend_bos=False)[:, 0]
    direction = ours.tokens_to_residual_directions(answers)
    direction = direction[0] - direction[1]
    ref_direction = ref.tokens_to_residual_directions(answers)
    close(direction, ref_direction[0] - ref_direction[1])
    resid, labels = cache.decompose_resid(apply_ln=True, pos_slice=-1, return_labels=True)
    ref_resid, ref_labels = ref_cache.decompose_resid(apply_ln=True, pos_slice=-1, return_labels=True)
    assert labels == ref_labels
    close(resid @ direction, ref_resid @ direction)
    heads, head_labels = cache.stack_head_results(layer=-1, pos_slice=-1, return_labels=True, apply_ln=True)
    ref_heads = ref_cache.stack_head_results(layer=-1, pos_slice=-1, apply_ln=True)
    ref_head_labels = ref.all_head_labels  # a method in TL 3.x (as ours), a property on TL 4's bridge
    assert head_labels == ours.all_head_labels() == (ref_head_labels() if callable(ref_head_labels) else ref_head_labels)
    close(heads @ direction, ref_heads @ direction)
    accumulated = cache.accumulated_resid(apply_ln=True, pos_slice=-1)
    close(accumulated, ref_cache.accumulated_resid(apply_ln=True, pos_slice=-1))
    # logit_attrs applies the final norm's scale itself: it takes the raw decomposition
    raw, ref_raw = cache.decompose_resid(pos_slice=-1), ref_cache.decompose_resid(pos_slice=-1)
    attrs = cache.logit_attrs(raw, tokens=answers[0], incorrect_tokens=answers[1], pos_slice=-1)
    close(attrs, ref_cache.logit_attrs(ref_raw, tokens=answers[0], incorrect_tokens=answers[1], pos_slice=-1))
    # on processed weights the components add up to the logit difference (up to the centred bias)
    diff = logits[0, -1, answers[0]] - logits[0, -1, answers[1]]
    close(attrs.sum() + (ours.b_U[answers[0]] - ours.b_U[answers[1]]), diff)


@torch.no_grad()
def test_head_ablation_and_residual_entry(pair):
    ours, ref = pair
    tokens = ref.to_tokens(PROMPTS)

    def ablate_head(z, hook):  # TL demo: zero one head's output
        z[:, :, 2] = 0.0
        return z

    hooks = [("blocks.1.attn.hook_z", ablate_head)]
    close(ours.run_with_hooks(tokens, fwd_hooks=hooks), ref.run_with_hooks(tokens, fwd_hooks=hooks))
    close(ours.run_with_hooks(tokens, return_type="loss", fwd_hooks=hooks),
          ref.run_with_hooks(tokens, return_type="loss", fwd_hooks=hooks))
    residual, toks, _, _ = ours.input_to_embed(PROMPT)
    ref_residual, ref_toks, _, _ = ref.input_to_embed(PROMPT)
    assert torch.equal(toks, ref_toks)
    close(residual, ref_residual)
    close(ours(residual, start_at_layer=0), ref(tokens[:1, : toks.shape[1]]))
    from interp.model.attention import KVCache

    kv = KVCache(ours.cfg.n_layers)
    ours(toks, kv_cache=kv)
    assert ours.get_pos_offset(None, 1) == 0 and ours.get_pos_offset(kv, 1) == toks.shape[1]
    # the residual entering block 0 after a cached prefix takes positions from the offset on
    more = ours.to_tokens(" John", prepend_bos=False)
    close(ours.input_to_embed(more, past_kv_cache=kv)[0], ref.input_to_embed(torch.cat([toks, more], 1))[0][:, -1:])


# --- circuits -----------------------------------------------------------------------------------------------------
@torch.no_grad()
def test_ov_qk_circuits_and_composition_scores(pair):
    from transformer_lens import FactoredMatrix

    ours, ref = pair
    assert isinstance(ours.OV, FactoredMatrix) and isinstance(ours.QK, FactoredMatrix)
    close(ours.OV.AB, ref.OV.AB)
    close(ours.QK.AB, ref.QK.AB)
    close(ours.W_E_pos, ref.W_E_pos)
    # full OV circuit of one head, W_E · W_OV · W_U, and its eigenvalues (TL's copying score)
    full_ov = ours.W_E @ ours.OV[1, 2] @ ours.W_U
    ref_full_ov = ref.W_E @ ref.OV[1, 2] @ ref.W_U
    close(full_ov.AB, ref_full_ov.AB)
    close(full_ov.eigenvalues, ref_full_ov.eigenvalues)
    for mode in ("Q", "K", "V"):
        scores = ours.all_composition_scores(mode)
        assert scores.shape == (2, 4, 2, 4) and bool((scores[1, :, 0] == 0).all())
        ref_scores = ref.all_composition_scores(mode)  # TL 4's bridge wraps the tensor (.scores)
        close(scores, getattr(ref_scores, "scores", ref_scores))
    with pytest.raises(InterpError, match="mode"):
        ours.all_composition_scores("X")


# --- generation -----------------------------------------------------------------------------------------------------
def test_greedy_generation_and_streaming(pair, folder):
    from transformers import AutoModelForCausalLM

    ours, ref = pair
    kwargs = {"max_new_tokens": 6, "do_sample": False, "verbose": False, "stop_at_eos": False}
    tokens = ours.to_tokens(PROMPT)
    whole = ours.generate(tokens, **kwargs)
    # greedy decoding is the source model's (processing keeps every log-probability): transformers' generate
    hf = AutoModelForCausalLM.from_pretrained(folder).eval()
    expected = hf.generate(tokens, max_new_tokens=6, do_sample=False, attention_mask=torch.ones_like(tokens))
    assert torch.equal(whole, expected)
    if tl_hooked_transformer() is not None:  # TL 4's bridge drifts from transformers here (see test_tl_parity)
        assert torch.equal(whole, ref.generate(tokens, **kwargs))
        assert ours.generate(PROMPT, **kwargs) == ref.generate(PROMPT, **kwargs)
    assert ours.generate(PROMPT, **kwargs) == ours.to_string(whole[0, 1:])  # text in, text out (BOS dropped)
    chunks = list(ours.generate_stream(tokens, max_tokens_per_yield=3, **kwargs))
    # TL's chunking: the prompt with the first new token (>= 3 columns), then 3 new tokens, then the last 2
    assert [c.shape[1] for c in chunks] == [tokens.shape[1] + 1, 3, 2]
    assert torch.equal(torch.cat(chunks, dim=1), whole)
    if tl_hooked_transformer() is not None:
        ref_chunks = list(ref.generate_stream(tokens, max_tokens_per_yield=3, **kwargs))
        assert [c.tolist() for c in chunks] == [c.tolist() for c in ref_chunks]


# --- state dicts and processing ---------------------------------------------------------------------------------------
@torch.no_grad()
def test_state_dicts_load_strictly_and_process(pair, folder):
    ours, ref = pair
    tokens = ours.to_tokens(PROMPTS)
    raw = HookedTransformer.from_pretrained_no_processing(str(folder))
    # our own TL-named state dict (unembed.W_U) into a fresh model of the same shape, strictly
    fresh = HookedTransformer.from_pretrained(str(folder))
    fresh.load_state_dict(ours.tl_state_dict())
    close(fresh(tokens), ours(tokens))
    # load_and_process_state_dict(unprocessed weights) with TL's defaults = from_pretrained
    again = HookedTransformer.from_pretrained_no_processing(str(folder))
    again.load_and_process_state_dict(raw.tl_state_dict())
    close(again(tokens), ours(tokens))
    # the individual steps return processed state dicts, as TL's; the model itself is left alone
    folded = raw.fold_layer_norm(raw.tl_state_dict())
    assert "blocks.0.ln1.w" not in folded and "blocks.0.ln1.w" in raw.state_dict()
    centred = raw.center_unembed()
    close(centred["unembed.W_U"].mean(-1), torch.zeros(raw.cfg.d_model))
    if tl_hooked_transformer() is not None:  # TL 3.x: its state dict loads strictly, and its steps agree with ours
        fresh.load_state_dict(ref.state_dict())
        close(fresh(tokens), ref(tokens))
        raw_ref = reference(folder, processed=False)
        theirs = raw_ref.fold_layer_norm({k: v.clone() for k, v in raw_ref.state_dict().items()})
        assert set(folded) <= set(theirs)  # TL's keeps the (now unused) norm weights and its mask buffers
        for key, value in folded.items():
            close(value, theirs[key])
    with pytest.raises(RuntimeError, match="Unexpected key"):
        fresh.load_state_dict({**ours.tl_state_dict(), "blocks.0.attn.W_X": torch.zeros(1)})


# --- the installable range ------------------------------------------------------------------------------------------
def test_transformer_lens_range_admits_sae_lens_and_this_install():
    """pyproject's transformer-lens range holds the installed TL and a version sae-lens accepts (it needs TL < 4),
    so `pip install interp sae-lens` can resolve (checked with a resolver dry-run: TL 3.9.0 + sae-lens 6.54)."""
    import re
    from importlib import metadata
    from pathlib import Path

    from packaging.requirements import Requirement

    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

    pyproject = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    ours = next(Requirement(r) for r in pyproject["project"]["dependencies"] if re.match(r"transformer-lens\b", r))
    assert metadata.version("transformer-lens") in ours.specifier
    assert {"3.9.0", "4.3.0"} <= set(ours.specifier.filter(["3.8.1", "3.9.0", "4.3.0", "5.0.0"]))
    try:
        needs = [Requirement(r) for r in metadata.requires("sae-lens") or []]
    except metadata.PackageNotFoundError:  # not installed: SAELens 6.54's published requirement
        needs = [Requirement("transformer-lens>=2.16.1,<4.0.0")]
    theirs = next(r for r in needs if r.name == "transformer-lens")
    assert "3.9.0" in theirs.specifier and "3.9.0" in ours.specifier
