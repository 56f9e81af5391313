"""Shared fixtures: tiny randomly initialised `transformers` models of every family we load, built offline.

Nothing here downloads anything: every model is built from a config object, every tokenizer from an
in-memory vocabulary. Heavy imports (transformers, TransformerLens' bridge) happen inside the helpers, so
test files that do not need them do not pay for them.

The HF models are perturbed with noise after initialisation: transformers initialises biases to 0 and norm
gains to 1, and a comparison that only ever sees those values cannot tell a dropped bias or a swapped norm
weight from a correct mapping.
"""

from __future__ import annotations

import contextlib
import copy
import os

# Belt and braces: the tests must never reach a hub, whatever the caller's environment says.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# A step's progress line appears only when the step outlasts 2 s (interp/progress.py), so with it on, what a
# test reads on stderr would depend on the machine's load; test_progress_lines.py turns it on where it checks it.
os.environ.setdefault("INTERP_PROGRESS", "0")
# Tests never install anything: TransformerLens' bridge runs `pip install torchvision` on the fly for multimodal
# classes, which once replaced this machine's CPU torch with a CUDA build. With no configuration file (so no local
# wheel folders) and no index, any pip a test's code starts fails at once instead.
os.environ["PIP_CONFIG_FILE"] = os.devnull
os.environ["PIP_NO_INDEX"] = "1"
os.environ["PIP_FIND_LINKS"] = ""

import pytest
import torch

# DecoderConfig overrides giving our own model each family's architecture (GPT-2; Llama with GQA; NeoX with
# partial rotary and parallel residual); tests add their own sizes, e.g. {**FAMILY_CONFIGS["llama"], "n_kv_heads": 1}.
FAMILY_CONFIGS = {
    "gpt2": {"positional": "learned", "act": "gelu_new"},
    "llama": {"positional": "rotary", "norm": "rmsnorm", "act": "silu", "gated": True, "n_kv_heads": 2,
              "attn_bias": False, "mlp_bias": False},
    "neox": {"positional": "rotary", "rotary_fraction": 0.25, "parallel_residual": True},
}

VOCAB = 96  # tiny vocabulary shared by every HF fixture
N_CTX = 32
EOS = 1  # an id inside the vocabulary (GPT-2's default 50256 is not)
NOISE = 0.1  # std of the noise added to every HF parameter (biases and norm gains included)

# family name -> (transformers config class name, kwargs). Each variant exercises a different part of the
# loader: GQA, MQA, explicit head_dim, q/k/v biases, MLP biases, tied/untied heads, partial rotary,
# parallel vs sequential residual, RoPE base.
HF_VARIANTS: dict[str, tuple[str, dict]] = {
    "gpt2": ("GPT2Config", {"n_positions": N_CTX, "n_embd": 32, "n_layer": 2, "n_head": 4}),
    "gpt2_relu_untied": (
        "GPT2Config",
        {"n_positions": N_CTX, "n_embd": 32, "n_layer": 2, "n_head": 4, "n_inner": 48, "activation_function": "relu",
             "tie_word_embeddings": False},
    ),
    "llama": (  # GQA: 4 query heads share 2 key/value heads
        "LlamaConfig",
        {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
             "num_key_value_heads": 2, "max_position_embeddings": N_CTX},
    ),
    "llama_biases_tied": (  # explicit head_dim != hidden/heads, every bias on, tied head, other RoPE base
        "LlamaConfig",
        {"hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2, "num_attention_heads": 4,
             "num_key_value_heads": 2, "head_dim": 16, "attention_bias": True, "mlp_bias": True, "tie_word_embeddings": True,
             "rope_theta": 500.0, "max_position_embeddings": N_CTX},
    ),
    "neox": (  # Pythia-style: parallel residual, a quarter of each head rotates
        "GPTNeoXConfig",
        {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
             "max_position_embeddings": N_CTX, "rotary_pct": 0.25, "use_parallel_residual": True},
    ),
    "neox_sequential": (
        "GPTNeoXConfig",
        {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
             "max_position_embeddings": N_CTX, "rotary_pct": 0.5, "use_parallel_residual": False, "attention_bias": False,
             "tie_word_embeddings": True},
    ),
    "qwen2": (  # q/k/v biases, no output bias, GQA
        "Qwen2Config",
        {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
             "num_key_value_heads": 2, "max_position_embeddings": N_CTX},
    ),
    "mistral": (  # MQA: a single key/value head
        "MistralConfig",
        {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
             "num_key_value_heads": 1, "max_position_embeddings": N_CTX, "sliding_window": None},
    ),
}
# One representative per family (what the TransformerLens bridge tests use).
HF_FAMILIES = ("gpt2", "llama", "neox", "qwen2", "mistral")


def hf_config(variant: str):
    import transformers

    cls_name, kwargs = HF_VARIANTS[variant]
    return getattr(transformers, cls_name)(
        vocab_size=VOCAB, eos_token_id=EOS, bos_token_id=EOS, pad_token_id=EOS, **kwargs
    )


def build_hf_model(variant: str, seed: int = 0, noise: float = NOISE):
    """A randomly initialised, noise-perturbed ``*ForCausalLM`` in eval mode with eager attention."""
    return build_hf_from_config(hf_config(variant), seed, noise)


@torch.no_grad()
def build_hf_from_config(config, seed: int = 0, noise: float = NOISE, attn_implementation: str = "eager"):
    """``build_hf_model`` for any `transformers` config object."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, attn_implementation=attn_implementation).eval()
    gen = torch.Generator().manual_seed(seed + 1)
    for p in model.parameters():  # tied tensors are one Parameter, so they stay tied
        p.add_(noise * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return model


_HF_CACHE: dict = {}


@pytest.fixture(scope="session")
def hf_model_factory():
    """``factory(variant)`` -> a fresh deep copy of a cached tiny HF model (tests may mutate their copy)."""

    def factory(variant: str, seed: int = 0):
        key = (variant, seed)
        if key not in _HF_CACHE:
            _HF_CACHE[key] = build_hf_model(variant, seed)
        return copy.deepcopy(_HF_CACHE[key])

    return factory


def tokens_for(batch: int = 2, pos: int = 12, vocab: int = VOCAB, seed: int = 0) -> torch.Tensor:
    """Random token ids (avoiding the EOS id, so nothing depends on special tokens)."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(2, vocab, (batch, pos), generator=gen)


def perturbed_float64_model(family: str = "gpt2", seed: int = 0, d_vocab: int = 40, n_ctx: int = 16, **over):
    """A tiny float64 `HookedDecoder` of a family's architecture, its weights (biases and gains too) perturbed so a
    test sees nonlinear behaviour, not the initialiser's zeros and ones."""
    from interp.model.config import DecoderConfig
    from interp.model.transformer import HookedDecoder

    torch.manual_seed(seed)
    cfg = {"d_vocab": d_vocab, "n_ctx": n_ctx, "d_model": 32, "n_layers": 2, "n_heads": 4, "d_mlp": 32,
           "dtype": "float64", "init_std": 0.2}
    m = HookedDecoder(DecoderConfig(**{**cfg, **FAMILY_CONFIGS[family], **over})).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return m


def word_level_tokenizer(vocab: int = VOCAB):
    """A `tokenizers.Tokenizer` whose tokens are the words 't0' ... 't{vocab-1}' (no training, no download)."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({f"t{i}": i for i in range(vocab)}, unk_token="t0"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return tok


@pytest.fixture(scope="session")
def hf_tokenizer_dir(tmp_path_factory):
    """A folder holding a `transformers` fast tokenizer over the tiny vocabulary.

    TransformerLens' bridge re-opens the tokenizer by its ``name_or_path`` to switch on BOS, so it must come
    from a folder (an in-memory `PreTrainedTokenizerFast` has no path and the bridge fails with KeyError).
    """
    from transformers import PreTrainedTokenizerFast

    folder = tmp_path_factory.mktemp("hf_tokenizer")
    tok = PreTrainedTokenizerFast(
        tokenizer_object=word_level_tokenizer(), unk_token="t0", eos_token=f"t{EOS}", bos_token=f"t{EOS}",
        pad_token=f"t{EOS}",
    )
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(autouse=True)
def _seed():
    """Every test starts from the same global RNG state, so failures reproduce."""
    torch.manual_seed(0)
    yield


@pytest.fixture(autouse=True)
def _run_in_tmp_path(tmp_path, monkeypatch):
    """Every test runs with its own empty working directory: a default output name (report.html, ...) or a
    relative path can never read or overwrite a file of the user's, whatever directory pytest started in."""
    monkeypatch.chdir(tmp_path)
    yield


def assert_close_to_scale(actual, expected, rtol: float = 1e-5, msg=None) -> None:
    """float32 results of two computations that differ only in BLAS blocking (batch shape, CPU vendor): every
    element within ``rtol`` of the compared tensor's largest magnitude. An element-wise relative test would fail
    on entries near zero, whose absolute error is set by the large entries they are summed from."""
    expected = torch.as_tensor(expected)
    actual = torch.as_tensor(actual)
    scale = float(expected.abs().max()) if expected.numel() else 0.0
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=rtol * max(scale, 1e-30), msg=msg)


def triton_interpreter_tests(test_file: str, ready: bool):
    """(autouse fixture, test_in_a_fresh_process) for a module that runs Triton kernels on the CPU.

    TRITON_INTERPRET must be set before triton is first imported. When something in this process imported it
    earlier (``ready`` False), the module's tests skip here and ``test_in_a_fresh_process`` runs the module
    again in a new process with the variable set, asserting that it passes there."""

    @pytest.fixture(autouse=True)
    def needs_kernel_runtime(request):
        if not ready and request.node.name != "test_in_a_fresh_process":
            pytest.skip("triton was imported before TRITON_INTERPRET was set; test_in_a_fresh_process runs this")

    def test_in_a_fresh_process():
        import subprocess
        import sys
        from pathlib import Path

        if ready:
            pytest.skip("the kernels run in this process")
        root = Path(test_file).resolve().parents[1]
        env = dict(os.environ, TRITON_INTERPRET="1",
                   PYTHONPATH=os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]))
        res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", test_file],
                             capture_output=True, text=True, env=env, cwd=root, timeout=900, check=False)
        assert res.returncode == 0, res.stdout[-4000:]

    return needs_kernel_runtime, test_in_a_fresh_process


@contextlib.contextmanager
def torch_threads(n: int):
    """Temporarily run torch on ``n`` threads."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture
def one_thread():
    """Run a test on one torch thread: tiny matmuls on a shared CPU are far slower with two (oversubscription)."""
    with torch_threads(1):
        yield


# ----------------------------------------------------------------------------------------------------
# The one-line duration estimate `bash run.sh test` prints before running, and the `quick` subset.
#
# Each run records how long every test took in pytest's own cache (.pytest_cache); the estimate adds those up for
# the tests selected now, and counts an average for tests it has not seen run (measured on the whole suite from a
# fresh clone, 2026-12-07: 1655 tests in 7 min 14 s on a quiet 2-core machine, ~0.26 s each, the CUDA tests that skip
# at run time included). Tests a skip marker already skips count as 0.

DURATIONS_KEY = "interp/durations"
UNSEEN_TEST_S = 0.26

# `-m quick`: a representative subset of fast tests (model, hooks, analyzers, reports, CLI, bad input), chosen from
# measured durations so it runs in under 2 minutes on 2 cores. A whole file is listed as None, else test names.
QUICK: dict[str, set[str] | None] = {
    "test_model_core.py": None,
    "test_tokenize.py": None,
    "test_analysis_logit_lens.py": None,
    "test_cli.py": {"test_models_lists_the_zoo_without_importing_torch"},
    "test_readme.py": {"test_readme_commands_are_found_and_go_through_the_environment"},
    "test_safe_serving.py": {"test_confine_lets_through_files_and_folders_inside_the_root",
                             "test_every_refusal_reads_the_same", "test_a_folder_is_refused_for_one_bad_entry",
                             "test_corpus_cut_to_the_byte_limit", "test_dashboard_refuses_a_remote_host_without_the_flag",
                             "test_attention_json_cannot_swallow_the_page"},
    "test_long_prompts.py": {"test_pooled_pattern_keeps_every_weight_and_the_induction_stripe",
                             "test_pattern_overview_is_bounded_and_its_ticks_never_crowd",
                             "test_split_character_ticks_are_unambiguous", "test_dla_bar_labels_have_rows_of_their_own",
                             "test_neuron_prompt_shading_is_symmetric_on_the_neurons_scale",
                             "test_prompt_longer_than_the_context_is_refused_before_loading",
                             "test_context_length_reads_transformers_spellings"},
}
# the slowest tests of those files (the tuned lens trains): left out of the subset
QUICK_EXCEPT = {"test_tuned_lens_training_lowers_kl_and_keeps_the_model_frozen", "test_tuned_lens_training_is_deterministic"}


def _skipped_at_collection(item) -> bool:
    if item.get_closest_marker("skip") is not None:
        return True
    return any(m.args and m.args[0] is True for m in item.iter_markers("skipif"))


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by marker
def pytest_collection_modifyitems(config, items):
    for item in items:
        names = QUICK.get(item.path.name, ())
        if (names is None or item.originalname in names) and item.originalname not in QUICK_EXCEPT:
            item.add_marker(pytest.mark.quick)


def pytest_collection_finish(session):
    cache = getattr(session.config, "cache", None)
    terminal = session.config.pluginmanager.get_plugin("terminalreporter")
    if cache is None or terminal is None or not session.items:
        return
    seen = cache.get(DURATIONS_KEY, {})
    items = [i for i in session.items if not _skipped_at_collection(i)]
    known = [seen[i.nodeid] for i in items if i.nodeid in seen]
    total = sum(known) + UNSEEN_TEST_S * (len(items) - len(known))
    when = f"{total:.0f} s" if total < 120 else f"{total / 60:.0f} min"
    basis = f"the last run's timings of {len(known)} of them" if known else f"about {UNSEEN_TEST_S} s a test"
    terminal.write_line(
        f"run.sh test: {len(session.items)} tests, about {when} ({basis}); "
        "`bash run.sh test -m quick` runs a subset in under 2 minutes")


_DURATIONS: dict[str, float] = {}


def pytest_runtest_logreport(report):
    if report.when in ("setup", "call"):  # a shared fixture's set-up counts for the first test that needs it
        _DURATIONS[report.nodeid] = _DURATIONS.get(report.nodeid, 0.0) + report.duration


def pytest_sessionfinish(session):
    cache = getattr(session.config, "cache", None)
    if cache is not None and _DURATIONS:
        cache.set(DURATIONS_KEY, {**cache.get(DURATIONS_KEY, {}), **_DURATIONS})


def saved_word_model_and_corpus(tmp_path, n_docs: int = 40, n_layers: int = 1):
    """A saved ``n_layers``-layer word-level model (``tmp_path/m``) and ``tmp_path/corpus.txt``: ``n_docs`` paragraphs of
    12 words t2 ... t95 (the word-level tokenizer's vocabulary). Returns ``(model, model_dir, corpus)``."""
    from interp.model.config import DecoderConfig
    from interp.model.transformer import HookedDecoder

    torch.manual_seed(0)
    model_dir = tmp_path / "m"
    model = HookedDecoder(DecoderConfig(d_vocab=VOCAB, n_ctx=32, d_model=16, n_layers=n_layers, n_heads=2, name="cli"))
    model.tokenizer = word_level_tokenizer()
    model.save(model_dir)
    g = torch.Generator().manual_seed(0)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(" ".join(f"t{int(i)}" for i in torch.randint(2, VOCAB, (12,), generator=g))
                                   for _ in range(n_docs)))
    return model, model_dir, corpus
