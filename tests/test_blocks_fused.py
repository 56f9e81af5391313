"""Every attention option through every fused path at model level: eager ≡ sdpa ≡ triton (in Triton's CPU
interpreter without a GPU) ≡ the lazy pattern rebuild, on fixed cases and on random option combinations drawn
by hypothesis. The eager path is the oracle (itself checked against transformers and a float64 brute force
in test_blocks.py).

TRITON_INTERPRET must be set before triton is imported; if something imported triton earlier in this process,
the module re-runs itself in a fresh one (as tests/test_kernels.py does).
"""

import os

import pytest
import torch

CUDA = torch.cuda.is_available()
if not CUDA:
    os.environ["TRITON_INTERPRET"] = "1"

triton = pytest.importorskip("triton")

from conftest import VOCAB, assert_close_to_scale, tokens_for, triton_interpreter_tests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from triton.runtime.interpreter import InterpretedFunction

from interp.model.config import DecoderConfig
from interp.model.transformer import HookedDecoder

INTERPRETER_READY = CUDA or isinstance(triton.language.zeros, InterpretedFunction)
DEVICE = "cuda" if CUDA else "cpu"


needs_kernel_runtime, test_in_a_fresh_process = triton_interpreter_tests(__file__, INTERPRETER_READY)


def make(seed=0, **over) -> HookedDecoder:
    torch.manual_seed(seed)
    base = {"d_vocab": VOCAB, "n_ctx": 64, "d_model": 64, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "d_head": 16,
                "positional": "rotary", "norm": "rmsnorm", "init_std": 0.2}
    return HookedDecoder(DecoderConfig(**{**base, **over})).to(DEVICE).eval()


PATTERNS = ("hook_pattern", "hook_attn_scores")


def check_paths(model, toks, backends=("sdpa", "triton"), grads=False):
    """Logits of every backend equal eager; patterns rebuilt lazily from each fused pass equal eager's."""
    names = lambda n: n.endswith(PATTERNS)
    ref, eager = model.run_with_cache(toks, attn_backend="eager", names_filter=names, lazy_patterns=False)
    for backend in backends:
        logits, lazy = model.run_with_cache(toks, attn_backend=backend, names_filter=names)
        assert_close_to_scale(logits, ref, msg=lambda m, b=backend: f"{b} logits: {m}")
        for layer in range(model.cfg.n_layers):
            name = f"blocks.{layer}.attn.hook_pattern"
            assert lazy.cache_dict.is_lazy(name)
            assert_close_to_scale(lazy[name], eager[name], msg=lambda m, b=backend, n=name: f"{b} {n}: {m}")
    if grads:  # training through the kernel's backward: parameter gradients equal eager's
        def param_grads(backend):
            model.zero_grad()
            model(toks, return_type="loss", attn_backend=backend).backward()
            return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

        expected = param_grads("eager")
        scale = max(float(g.abs().max()) for g in expected.values())  # tiny gradients: held to the largest
        for backend in backends:
            got = param_grads(backend)
            for n, g in expected.items():
                torch.testing.assert_close(got[n], g, rtol=2e-5, atol=2e-5 * scale,
                                           msg=lambda m, b=backend, n=n: f"{b} d{n}: {m}")


@pytest.mark.parametrize("options", [
    {"sliding_window": 7, "layer_types": ["sliding_attention", "full_attention"], "attn_softcap": 2.0},
    {"sliding_window": 5, "attn_softcap": 1.5, "alibi": True, "attn_multiplier": 0.3, "qk_norm": "per_head",
         "rotary_interleaved": True},
], ids=["per-layer-window+softcap", "everything"])
def test_triton_backend_at_model_level(options):
    model = make(**options)
    check_paths(model, tokens_for(2, 33).to(DEVICE), grads=True)  # 33 > 2 key blocks of 16: windows bind


def test_chunked_attention_on_the_fused_paths_and_refused_by_the_kernel():
    """Llama 4's chunked attention: sdpa (an explicit block mask) and the lazy rebuild equal eager; the Triton
    kernel has no chunk mask, so asking for it is refused by name and 'auto' picks sdpa."""
    from interp.errors import InterpError
    from interp.model.attention import resolve_backend

    model = make(attention_chunk_size=8, layer_types=["chunked_attention", "full_attention"])
    toks = tokens_for(2, 33).to(DEVICE)
    check_paths(model, toks, backends=("sdpa",), grads=True)
    with pytest.raises(InterpError, match="chunked attention"):
        model(toks, attn_backend="triton")
    assert resolve_backend("auto", model.cfg, torch.device(DEVICE)) == "sdpa"
    _, cache = model.run_with_cache(toks, names_filter=lambda n: n.endswith("hook_pattern"))
    pattern = cache["blocks.0.attn.hook_pattern"]
    assert pattern[..., 20, :16].abs().max() == 0 and pattern[..., 20, 16:21].sum(-1).allclose(torch.ones(()))


def test_latent_attention_on_every_path():
    """DeepSeek V3's multi-head latent attention (value heads narrower than q/k: zero-padded for the fused kernels,
    which change no score or output) through sdpa, triton and the lazy rebuild, forward and backward."""
    model = make(kv_lora_rank=12, q_lora_rank=16, qk_rope_dim=4, d_head=16, d_head_v=8, n_kv_heads=4,
                 rotary_interleaved=True, attn_bias=False)
    check_paths(model, tokens_for(2, 33).to(DEVICE), grads=True)


def test_attention_sinks_on_every_path():
    """GPT-OSS's sinks: the fused paths (sdpa, triton) fold them in through the kernel's lse, the lazy rebuild adds
    them to its normaliser, a backward pass takes the eager path; rows then give the real keys less than 1."""
    model = make(attn_sinks=True, sliding_window=7, layer_types=["sliding_attention", "full_attention"])
    with torch.no_grad():
        for block in model.blocks:
            block.attn.sinks.normal_(std=2.0)
    toks = tokens_for(2, 33).to(DEVICE)
    check_paths(model, toks, grads=True)
    _, cache = model.run_with_cache(toks, names_filter=lambda n: n.endswith("hook_pattern"))
    total = cache["blocks.1.attn.hook_pattern"].sum(-1)
    assert total.min() < 0.9 and total.max() <= 1 + 1e-6 and total.min() > 0


# --- random combinations ---------------------------------------------------------------------------------------

ROPES = [None, {"rope_type": "linear", "factor": 2.0}, {"rope_type": "yarn", "factor": 4.0,
                                                         "original_max_position_embeddings": 16},
         {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 16}]


@st.composite
def option_sets(draw):
    n_heads = draw(st.sampled_from([2, 4]))
    opts = {"n_heads": n_heads, "n_kv_heads": draw(st.sampled_from([k for k in (1, 2, 4) if n_heads % k == 0])),
                "d_model": 16 * n_heads}
    window = draw(st.one_of(st.none(), st.integers(1, 12)))
    if window is not None:
        opts["sliding_window"] = window
        opts["layer_types"] = draw(st.one_of(st.none(), st.lists(
            st.sampled_from(["full_attention", "sliding_attention"]), min_size=2, max_size=2)))
    opts["attn_softcap"] = draw(st.one_of(st.none(), st.floats(0.5, 20.0)))
    opts["attn_multiplier"] = draw(st.one_of(st.none(), st.floats(0.05, 0.5)))
    if draw(st.booleans()):
        opts.update(alibi=True, positional=draw(st.sampled_from(["none", "rotary"])))
    if opts.get("positional", "rotary") == "rotary":
        opts["rotary_interleaved"] = draw(st.booleans())
        opts["rotary_fraction"] = draw(st.sampled_from([0.5, 1.0]))
        opts["rope_parameters"] = draw(st.sampled_from(ROPES))
        opts["rope_layers"] = draw(st.one_of(st.none(), st.just([False, True])))
    opts["qk_norm"] = draw(st.sampled_from([None, "per_head", "across_heads"]))
    opts["norm_placement"] = draw(st.sampled_from(["pre", "sandwich", "sublayer_post"]))
    return opts


@settings(max_examples=10, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(opts=option_sets(), batch=st.integers(1, 2), length=st.integers(1, 30))
def test_random_option_combinations_agree_on_every_path(opts, batch, length):
    model = make(seed=length, **opts)
    toks = tokens_for(batch, length, seed=length).to(DEVICE)
    # the interpreter is slow: triton on the short half of the draws, sdpa on all
    check_paths(model, toks, backends=("sdpa", "triton") if length <= 10 or CUDA else ("sdpa",))
