"""A TransformerLens user's script gives the same answers on interp as on TransformerLens' ``TransformerBridge``.

Each test runs the same short script on ``interp.load(folder)`` and on ``TransformerBridge.boot_transformers(folder)``
for one tiny `transformers` model per family (GPT-2, Llama with GQA, GPT-NeoX with partial rotary and a parallel
residual) saved with a byte-level BPE tokenizer into a local folder, so both sides read the very same files offline.
Compared: tokens (default BOS, with and without it, batches padded on either side), logits, loss and loss per
token, every shared hook, the gated hooks (``set_use_*``), the set of hook points that fire, and greedy generation
(against `transformers`' own ``generate``, which the bridge's drifts from: see ``test_greedy_generation``).
``transformer_lens.benchmarks`` functions that take a model object run with interp as the model under test.

Known differences, checked rather than hidden:
* Padding positions of a left-padded batch: a pad query attends to itself in interp (finite, never read by a real
  token) and to every key in `transformers`; only real positions are compared.
* GPT-NeoX: interp's ``attn.hook_rot_q/hook_rot_k`` fire (RoPE runs there); the bridge registers them but they
  never fire (they are missing from its cache too).
"""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import FAMILY_CONFIGS, HF_VARIANTS

import interp
from interp.errors import InterpError
from interp.model.config import DecoderConfig
from interp.model.transformer import HookedDecoder

FAMILIES = ("gpt2", "llama", "neox")
ATOL = 1e-5
TEXT = "the cat sat on the mat"
TEXTS = ["the quick brown fox sat on the mat", "a dog", "hello world"]
BPE_VOCAB = 300
ONLY_OURS = {"gpt2": set(), "llama": set(), "neox": {"attn.hook_rot_q", "attn.hook_rot_k"}}
GATED_FLAGS = ("use_attn_result", "use_attn_in", "use_split_qkv_input", "use_hook_mlp_in")


@pytest.fixture(scope="module")
def bpe_tokenizer():
    """A byte-level BPE tokenizer (ours), trained in memory; <|endoftext|> (id 0) is BOS, EOS and pad."""
    from transformers import PreTrainedTokenizerFast

    from interp.tokenize import EOS_TOKEN, train_tokenizer

    corpus = ["the cat sat on the mat", "a dog ran far away", "hello world, the quick brown fox"] * 20
    raw = train_tokenizer(corpus, vocab_size=BPE_VOCAB)
    return PreTrainedTokenizerFast(tokenizer_object=raw, bos_token=EOS_TOKEN, eos_token=EOS_TOKEN, pad_token=EOS_TOKEN)


@pytest.fixture(scope="module")
def pair(bpe_tokenizer, tmp_path_factory):
    """family -> (interp model, TransformerBridge, transformers model), all read from one local folder."""
    import transformers
    from transformer_lens.model_bridge import TransformerBridge

    made = {}

    def factory(family: str):
        if family not in made:
            cls_name, kwargs = HF_VARIANTS[family]
            config = getattr(transformers, cls_name)(
                vocab_size=bpe_tokenizer.backend_tokenizer.get_vocab_size(), bos_token_id=0, eos_token_id=0,
                pad_token_id=0, **kwargs)
            torch.manual_seed(0)
            hf = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager").eval()
            with torch.no_grad():  # off the default init, so a dropped bias or gain would show
                for p in hf.parameters():
                    p.add_(0.1 * torch.randn_like(p))
            folder = tmp_path_factory.mktemp(f"tl_{family}")
            hf.save_pretrained(folder)
            bpe_tokenizer.save_pretrained(folder)
            bridge = TransformerBridge.boot_transformers(str(folder), hf_model=copy.deepcopy(hf), device="cpu")
            made[family] = (interp.load(folder), bridge, hf)
        return made[family]

    return factory


# --- tokens -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", FAMILIES)
def test_tokens_match_the_bridge(pair, family):
    ours, bridge, _ = pair(family)
    assert ours.cfg.default_prepend_bos == bridge.cfg.default_prepend_bos == (family != "neox")
    for bos in (None, True, False):
        assert torch.equal(ours.to_tokens(TEXT, prepend_bos=bos), bridge.to_tokens(TEXT, prepend_bos=bos)), bos
        assert ours.to_str_tokens(TEXT, prepend_bos=bos) == bridge.to_str_tokens(TEXT, prepend_bos=bos)
    assert ours.to_tokens(TEXT, prepend_bos=True)[0, 0] == 0
    for side in ("left", "right"):
        assert torch.equal(ours.to_tokens(TEXTS, padding_side=side), bridge.to_tokens(TEXTS, padding_side=side)), side
    tokens = ours.to_tokens(TEXTS)
    assert ours.to_string(tokens) == bridge.to_string(tokens)
    # model.tokenizer is a transformers tokenizer, as TransformerLens code expects
    tok = ours.tokenizer
    assert tok.bos_token_id == bridge.tokenizer.bos_token_id == 0
    assert tok(TEXT)["input_ids"] == bridge.tokenizer(TEXT, add_special_tokens=False)["input_ids"]
    assert tok.decode(tokens[0], skip_special_tokens=True) == bridge.tokenizer.decode(tokens[0], skip_special_tokens=True)
    assert ours.to_single_token("the") == bridge.to_single_token("the")
    assert ours.get_token_position(" cat", TEXT) == bridge.get_token_position(" cat", TEXT)


# --- logits and loss --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", FAMILIES)
def test_logits_and_loss_match_the_bridge(pair, family):
    ours, bridge, _ = pair(family)
    with torch.no_grad():
        for bos in (None, not ours.cfg.default_prepend_bos):
            torch.testing.assert_close(ours(TEXT, prepend_bos=bos), bridge(TEXT, prepend_bos=bos), atol=ATOL, rtol=1e-5)
        loss, ref = ours(TEXT, return_type="loss"), bridge(TEXT, return_type="loss")
        torch.testing.assert_close(loss, ref, atol=ATOL, rtol=1e-5)
        per_token = ours(TEXT, return_type="loss", loss_per_token=True)
        torch.testing.assert_close(per_token, bridge(TEXT, return_type="loss", loss_per_token=True), atol=ATOL, rtol=1e-5)
        assert per_token.shape == (1, ours.to_tokens(TEXT).shape[1] - 1)
        torch.testing.assert_close(per_token.mean(), loss, atol=ATOL, rtol=1e-5)
        for side in ("right", "left"):
            tokens = ours.to_tokens(TEXTS, padding_side=side)
            real = ours.padding_mask(tokens, padding_side=side).bool()
            assert (~real).any()  # the batch really is padded
            got, want = ours(TEXTS, padding_side=side), bridge(TEXTS, padding_side=side)
            torch.testing.assert_close(got[real], want[real], atol=ATOL, rtol=1e-5)
            got = ours(TEXTS, padding_side=side, return_type="loss", loss_per_token=True)
            want = bridge(TEXTS, padding_side=side, return_type="loss", loss_per_token=True)
            torch.testing.assert_close(got, want, atol=ATOL, rtol=1e-5)
            torch.testing.assert_close(ours(TEXTS, padding_side=side, return_type="loss"),
                                       bridge(TEXTS, padding_side=side, return_type="loss"), atol=ATOL, rtol=1e-5)
        # stop_at_layer / start_at_layer split the forward pass where the bridge splits it
        resid = ours(TEXT, stop_at_layer=1)
        torch.testing.assert_close(resid, bridge(TEXT, stop_at_layer=1), atol=ATOL, rtol=1e-5)
        torch.testing.assert_close(resid, ours(TEXT, stop_at_layer=-ours.cfg.n_layers + 1), atol=ATOL, rtol=1e-5)
        torch.testing.assert_close(ours(resid, start_at_layer=1), ours(TEXT), atol=ATOL, rtol=1e-5)
        torch.testing.assert_close(ours(resid, start_at_layer=1), bridge(resid, start_at_layer=1), atol=ATOL, rtol=1e-5)
        labels = ours.to_tokens(TEXT)
        torch.testing.assert_close(ours(resid, start_at_layer=1, return_type="loss", labels=labels), loss,
                                   atol=ATOL, rtol=1e-5)
        # left padding with an explicit mask on token input: each row equals that prompt run alone
        tokens = ours.to_tokens(TEXTS, padding_side="left")
        mask = ours.padding_mask(tokens, padding_side="left")
        batched = ours(tokens, attention_mask=mask)
        for i, text in enumerate(TEXTS):
            alone = ours(text)
            torch.testing.assert_close(batched[i, -alone.shape[1]:], alone[0], atol=ATOL, rtol=1e-5)


# --- hooks ------------------------------------------------------------------------------------------------------
def _fired(model, names, text) -> set[str]:
    """The names among ``names`` whose hook is called in one forward pass (by the name asked for: the bridge's
    TransformerLens names are aliases of its own hook points)."""
    fired = set()

    def recorder(name):
        def record(act, hook):
            fired.add(name)
        return record

    with torch.no_grad():
        model.run_with_hooks(text, fwd_hooks=[(n, recorder(n)) for n in names])
    return fired


@pytest.mark.parametrize("family", FAMILIES)
def test_shared_hooks_and_the_hooks_that_fire(pair, family):
    from transformer_lens.benchmarks.utils import compare_activation_dicts

    ours, bridge, _ = pair(family)
    with torch.no_grad():
        _, our_cache = ours.run_with_cache(TEXT, attn_backend="eager")
        _, bridge_cache = bridge.run_with_cache(TEXT)
    ours_d, bridge_d = dict(our_cache.items()), dict(bridge_cache.items())
    shared = (set(ours_d) & set(bridge_d)) - {k for k in ours_d if k.endswith("hook_attn_scores")}  # -inf vs min
    only_ours = {f"blocks.{layer}.{h}" for layer in range(ours.cfg.n_layers) for h in ONLY_OURS[family]}
    assert set(ours_d) - set(bridge_d) == only_ours  # every hook we cache, the bridge has (or it is documented)
    assert not compare_activation_dicts({k: ours_d[k] for k in shared}, {k: bridge_d[k] for k in shared}, atol=ATOL)
    torch.testing.assert_close(ours_d["hook_unembed"], bridge_d["hook_unembed"], atol=ATOL, rtol=1e-5)

    # every hook point we register fires; those the bridge also has fire there too; the rest is documented
    names = set(ours.hook_dict)
    assert _fired(ours, names, TEXT) == names
    fire_in_bridge = _fired(bridge, {n for n in names if n in bridge.hook_dict}, TEXT)
    assert names - fire_in_bridge == only_ours


@pytest.mark.parametrize("family", FAMILIES)
def test_gated_hooks_match_the_bridge(pair, family):
    ours, bridge, _ = pair(family)
    layer, head = 1, 1
    hooks = {"use_attn_result": ["attn.hook_result"], "use_attn_in": ["hook_attn_in"],
             "use_split_qkv_input": ["hook_q_input", "hook_k_input", "hook_v_input"], "use_hook_mlp_in": ["hook_mlp_in"]}

    def shift(act, hook):  # move one head's copy (or the whole MLP input) by a constant
        act = act.clone()
        ramp = torch.linspace(-1.0, 1.0, act.shape[-1])  # not constant: a norm would cancel a constant
        if act.ndim == 4:
            act[:, :, head] += ramp
        else:
            act += ramp
        return act

    for flag in GATED_FLAGS:
        for model in (ours, bridge):
            getattr(model, f"set_{flag}")(True)
        try:
            names = [f"blocks.{layer}.{h}" for h in hooks[flag]]
            with torch.no_grad():
                _, our_cache = ours.run_with_cache(TEXT, names_filter=names)
                _, bridge_cache = bridge.run_with_cache(TEXT, names_filter=names)
                for name in names:
                    assert our_cache[name].shape == bridge_cache[name].shape, name
                    torch.testing.assert_close(our_cache[name], bridge_cache[name], atol=ATOL, rtol=1e-5)
                # an edit through the gated hook has the same effect on both
                fwd = [(names[0], shift)]
                got, want = ours.run_with_hooks(TEXT, fwd_hooks=fwd), bridge.run_with_hooks(TEXT, fwd_hooks=fwd)
                assert (got - ours(TEXT)).abs().max() > 1e-4  # the edit did something
                torch.testing.assert_close(got, want, atol=ATOL, rtol=1e-5)
            assert _fired(ours, set(ours.hook_dict), TEXT) == set(ours.hook_dict)
            assert not any(module.training for module in ours.modules())  # new hook points follow eval()
        finally:
            for model in (ours, bridge):
                getattr(model, f"set_{flag}")(False)
    assert not any("input" in n or "attn_in" in n or "mlp_in" in n or "result" in n for n in ours.hook_dict)


# --- generation -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", FAMILIES)
def test_greedy_generation_equals_transformers(pair, family):
    """Greedy decoding with our KV cache equals `transformers`' generate token for token (the bridge's own KV-cached
    loop drifts from it after the first token on some families, so only the first new token is compared there)."""
    ours, bridge, hf = pair(family)
    n = 8
    prompt = ours.to_tokens(TEXT)
    want = hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=n, do_sample=False,
                       pad_token_id=0)
    for kv in (True, False):
        got = ours.generate(prompt, max_new_tokens=n, do_sample=False, stop_at_eos=False, use_past_kv_cache=kv,
                            verbose=False)
        assert torch.equal(got, want), (kv, got.tolist(), want.tolist())
    text = ours.generate(TEXT, max_new_tokens=n, do_sample=False, stop_at_eos=False, verbose=False)
    assert isinstance(text, str) and text == ours.tokenizer.decode(want[0], skip_special_tokens=True)
    first = bridge.generate(TEXT, max_new_tokens=1, do_sample=False, stop_at_eos=False, verbose=False,
                            return_type="tokens")
    assert torch.equal(first, want[:, : prompt.shape[1] + 1])
    # a left-padded batch of prompts: every row continues as transformers continues it
    tokens = ours.to_tokens(TEXTS, padding_side="left")
    mask = ours.padding_mask(tokens, padding_side="left")
    want = hf.generate(tokens, attention_mask=mask, max_new_tokens=n, do_sample=False, pad_token_id=0)
    got = ours.generate(TEXTS, max_new_tokens=n, do_sample=False, stop_at_eos=False, verbose=False,
                        return_type="tokens")
    assert torch.equal(got, want), (got.tolist(), want.tolist())
    texts = ours.generate(TEXTS, max_new_tokens=n, do_sample=False, stop_at_eos=False, verbose=False)
    assert texts == [ours.tokenizer.decode(row, skip_special_tokens=True) for row in want]


def test_transformer_lens_utilities_run_unchanged(pair, capsys):
    """TransformerLens' own helpers that take a model: test_prompt prints the same, patching gives the same."""
    from transformer_lens import patching
    from transformer_lens.utilities import test_prompt

    ours, bridge, _ = pair("gpt2")
    printed = []
    for model in (ours, bridge):
        test_prompt("the cat sat on the", " mat", model, top_k=3)
        printed.append(capsys.readouterr().out)
    assert printed[0] == printed[1] and "Rank" in printed[0]

    clean, corrupt = ours.to_tokens("the cat sat on the mat"), ours.to_tokens("the dog sat on the mat")
    answer = ours.to_single_token(" mat")

    def metric(logits):
        return logits[0, -1, answer]

    results = []
    for model in (ours, bridge):
        with torch.no_grad():
            _, cache = model.run_with_cache(clean)
            results.append(patching.get_act_patch_resid_pre(model, corrupt, cache, metric))
    assert results[0].shape == (ours.cfg.n_layers, clean.shape[1])
    torch.testing.assert_close(results[0], results[1], atol=ATOL, rtol=1e-5)


def test_sampling_keywords(pair):
    ours, _, _ = pair("gpt2")
    prompt = ours.to_tokens(TEXT)
    a = ours.generate(prompt, max_new_tokens=6, top_k=5, top_p=0.9, temperature=0.8, seed=3, verbose=False)
    b = ours.generate(prompt, max_new_tokens=6, top_k=5, top_p=0.9, temperature=0.8, seed=3, verbose=False)
    assert torch.equal(a, b) and a.shape == (1, prompt.shape[1] + 6)
    # a huge frequency penalty forbids repeating any token already in the row
    c = ours.generate(prompt, max_new_tokens=6, freq_penalty=1e4, stop_at_eos=False, seed=0, verbose=False)
    new = c[0, prompt.shape[1]:].tolist()
    assert not set(new) & set(prompt[0].tolist()) and len(set(new)) == len(new)


# --- TransformerLens' own benchmark functions, interp as the model under test ------------------------------------
@pytest.mark.parametrize("family", FAMILIES)
def test_transformer_lens_benchmarks(pair, family):
    from transformer_lens.benchmarks import (
        activation_cache,
        backward_gradients,
        forward_pass,
        hook_registration,
    )

    ours, bridge, _ = pair(family)
    with torch.no_grad():
        ref_logits = bridge(TEXT)
        ref_loss = bridge(TEXT, return_type="loss", labels=bridge.to_tokens(TEXT)).item()
        _, ref_cache = bridge.run_with_cache(TEXT)
    shared = {k: v for k, v in ref_cache.items() if k in ours.hook_dict and not k.endswith("hook_attn_scores")}
    results = [
        forward_pass.benchmark_logits_equivalence(ours, TEXT, reference_logits=ref_logits, atol=ATOL),
        forward_pass.benchmark_loss_equivalence(ours, TEXT, reference_loss=ref_loss, atol=ATOL),
        hook_registration.benchmark_forward_hooks(ours, TEXT, reference_activations=shared, tolerance=ATOL),
        hook_registration.benchmark_critical_forward_hooks(ours, TEXT, reference_activations=shared),
        hook_registration.benchmark_hook_functionality(ours, TEXT, reference_effect=_ablation_effect(bridge), atol=ATOL),
        hook_registration.benchmark_gated_hooks_fire(ours, TEXT),
        activation_cache.benchmark_run_with_cache(ours, TEXT),
        activation_cache.benchmark_activation_cache(ours, TEXT),
        backward_gradients.benchmark_critical_backward_hooks(ours, TEXT),
    ]
    failed = [(r.name, r.message) for r in results if not r.passed]
    assert not failed, failed


def _ablation_effect(bridge) -> float:
    """The loss change benchmark_hook_functionality measures, computed on the bridge (its reference_effect)."""
    def zero_head(act, hook):
        act = act.clone()
        act[:, :, 0, :] = 0
        return act

    labels = bridge.to_tokens(TEXT)
    with torch.no_grad():
        clean = bridge(TEXT, return_type="loss", labels=labels)
        ablated = bridge.run_with_hooks(TEXT, return_type="loss", labels=labels,
                                        fwd_hooks=[("blocks.0.attn.hook_v", zero_head)])
    return float(ablated - clean)


# --- every registered hook point fires, for every architecture ---------------------------------------------------
ARCHS = {**FAMILY_CONFIGS, "post_ln": {"norm_placement": "post"}, "deepnorm_rms": {"norm_placement": "deepnorm",
         "norm": "rmsnorm", "positional": "sinusoidal"}, "no_pos_no_final_norm": {"positional": "none",
         "final_norm": False}}


@pytest.mark.parametrize("arch", sorted(ARCHS))
@pytest.mark.parametrize("flags", [(), ("use_attn_result", "use_attn_in", "use_hook_mlp_in"), ("use_split_qkv_input",)])
def test_every_hook_point_fires(arch, flags):
    cfg = DecoderConfig(d_vocab=40, n_ctx=16, d_model=32, n_layers=2, n_heads=4, **ARCHS[arch])
    model = HookedDecoder(cfg).eval()
    for flag in flags:
        getattr(model, f"set_{flag}")(True)
    tokens = torch.randint(0, 40, (2, 7))
    names = set(model.hook_dict)
    assert _fired(model, names, tokens) == names
    # nothing is registered that the architecture does not compute
    assert ("blocks.0.attn.hook_rot_q" in names) == (cfg.positional == "rotary")
    assert ("blocks.0.hook_resid_mid" in names) == (not cfg.parallel_residual)
    assert ("hook_pos_embed" in names) == (cfg.positional in ("learned", "sinusoidal"))
    assert ("blocks.0.hook_q_input" in names) == ("use_split_qkv_input" in flags)
    # the gated paths compute the same function as the plain one
    plain = HookedDecoder(DecoderConfig(**{**cfg.to_dict(), **dict.fromkeys(GATED_FLAGS, False)}))
    plain.load_state_dict(model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(model(tokens), plain(tokens), atol=1e-5, rtol=1e-5)


def test_cache_shorthand_keys_and_hook_unembed():
    model = interp.load()
    logits, cache = model.run_with_cache("In the beginning")
    torch.testing.assert_close(cache["resid_pre", 0], cache["blocks.0.hook_resid_pre"])
    torch.testing.assert_close(cache["resid_post", -1], cache[f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"])
    torch.testing.assert_close(cache["scale", 1, "ln2"], cache["blocks.1.ln2.hook_scale"])
    torch.testing.assert_close(cache["pattern", 0], cache["blocks.0.attn.hook_pattern"])
    torch.testing.assert_close(cache["unembed"], logits)


def test_bad_keywords_are_one_line_errors():
    model = interp.load()
    cases = [
        (lambda: model("hi", padding_side="middle"), "padding_side"),
        (lambda: model.to_tokens("hi", prepend_bos="yes"), "prepend_bos"),
        (lambda: model(torch.tensor([[1, 2, 3]]), attention_mask=torch.ones(1, 2)), "attention_mask"),
        (lambda: model(torch.tensor([[1, 2, 3]]), attention_mask=torch.full((1, 3), 2)), "attention_mask"),
        (lambda: model(torch.tensor([[1, 2, 3]]), return_type="loss", labels=torch.ones(1, 2)), "labels"),
        (lambda: model.generate("hi", return_type="json"), "return_type"),
        (lambda: model.generate("hi", freq_penalty=-1.0, verbose=False), "freq_penalty"),
        (lambda: model.run_with_hooks("hi", fwd_hooks=[("blocks.0.hook_q_input", lambda a, hook: a)]),
         "set_use_split_qkv_input"),
        (lambda: model.set_use_attn_in(1), "set_use_attn_in"),
        (lambda: model("hi", stop_at_layer=9), "stop_at_layer"),
        (lambda: model(torch.tensor([[1, 2, 3]]), start_at_layer=1), "start_at_layer"),
        (lambda: model(torch.zeros(1, 3, model.cfg.d_model), start_at_layer=1, return_type="loss"), "labels"),
    ]
    for call, word in cases:
        with pytest.raises(InterpError) as err:
            call()
        assert word in str(err.value) and "\n" not in str(err.value), str(err.value)
    model.set_use_attn_in(True)
    try:
        with pytest.raises(InterpError, match="exclude each other"):
            model.set_use_split_qkv_input(True)
    finally:
        model.set_use_attn_in(False)
