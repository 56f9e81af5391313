"""The shipped long-context model (docs-bible-austen-2l-2k): a 1,000-token prompt is analysed, a longer one than
its context is refused before loading, and its card's loss-by-position numbers are true.

The forward pass and the cache are checked against a float64 eager transformer written out below from the
safetensors weights alone (LayerNorm, rotate-half RoPE, causal softmax attention, GELU MLP), not with the code
under test.
"""

from __future__ import annotations

import json
import math
import re

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from tokenizers import Tokenizer

import interp
from interp.errors import InterpError
from interp.zoo import ZOO, default_model_name

NAME = "docs-bible-austen-2l-2k"
FOLDER = ZOO / NAME
N_PROMPT = 1000

pytestmark = pytest.mark.skipif(not (FOLDER / "model.safetensors").is_file(), reason=f"{FOLDER} not shipped")


@pytest.fixture(scope="module")
def model():
    torch.set_num_threads(min(2, torch.get_num_threads()))
    return interp.load(NAME).eval()


@pytest.fixture(scope="module")
def heldout_ids() -> torch.Tensor:
    tok = Tokenizer.from_file(str(FOLDER / "tokenizer.json"))
    return torch.tensor(tok.encode((FOLDER / "heldout.txt").read_text(encoding="utf-8"), add_special_tokens=False).ids)


def reference_forward(folder, tokens: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """float64 eager forward of a pre-LayerNorm RoPE decoder from its config.json and model.safetensors:
    (logits, {"pattern.L": [batch, head, q, k], "resid_post.L": [batch, pos, d_model]})."""
    cfg = json.loads((folder / "config.json").read_text())
    w = {k: v.double() for k, v in load_file(str(folder / "model.safetensors")).items()}
    assert (cfg["positional"], cfg["norm"], cfg["norm_placement"], cfg["act"]) == ("rotary", "layernorm", "pre", "gelu")
    assert not cfg["gated"] and not cfg["parallel_residual"] and cfg["rotary_fraction"] == 1.0

    def ln(x, prefix):
        return F.layer_norm(x, x.shape[-1:], w[f"{prefix}.w"], w[f"{prefix}.b"], cfg["norm_eps"])

    n, d_head = tokens.shape[1], cfg["d_head"]
    inv_freq = 1.0 / cfg["rotary_base"] ** (torch.arange(0, d_head, 2, dtype=torch.float64) / d_head)
    angles = torch.arange(n, dtype=torch.float64)[:, None] * inv_freq[None]  # [pos, d_head / 2]
    cos, sin = torch.cat([angles.cos()] * 2, -1)[:, None], torch.cat([angles.sin()] * 2, -1)[:, None]

    def rope(t):  # [batch, pos, head, d_head]; pairs (i, i + d_head / 2)
        half = d_head // 2
        return t * cos + torch.cat([-t[..., half:], t[..., :half]], -1) * sin

    causal = torch.ones(n, n, dtype=torch.bool).tril()
    x = w["embed.W_E"][tokens]
    out = {}
    for layer in range(cfg["n_layers"]):
        p = f"blocks.{layer}"
        h = ln(x, f"{p}.ln1")
        q, k, v = (torch.einsum("bpd,hde->bphe", h, w[f"{p}.attn.W_{c}"]) + w[f"{p}.attn.b_{c}"] for c in "QKV")
        scores = torch.einsum("bqhe,bkhe->bhqk", rope(q), rope(k)) / math.sqrt(d_head)
        pattern = scores.masked_fill(~causal, float("-inf")).softmax(-1)
        z = torch.einsum("bhqk,bkhe->bqhe", pattern, v)
        x = x + torch.einsum("bqhe,hed->bqd", z, w[f"{p}.attn.W_O"]) + w[f"{p}.attn.b_O"]
        h = ln(x, f"{p}.ln2")
        x = x + F.gelu(h @ w[f"{p}.mlp.W_in"] + w[f"{p}.mlp.b_in"]) @ w[f"{p}.mlp.W_out"] + w[f"{p}.mlp.b_out"]
        out[f"pattern.{layer}"], out[f"resid_post.{layer}"] = pattern, x
    return ln(x, "ln_final") @ w["unembed.W_U_param"] + w["unembed.b_U"], out


@pytest.fixture(scope="module")
def long_prompt(heldout_ids):
    return heldout_ids[None, :N_PROMPT]


@pytest.fixture(scope="module")
def reference(long_prompt):
    return reference_forward(FOLDER, long_prompt)


def test_folder_is_complete_and_reads_long_prompts(model):
    for name in ("config.json", "model.safetensors", "tokenizer.json", "README.md", "recipe.json", "recipe.md",
                 "heldout.txt"):
        assert (FOLDER / name).is_file(), name
    default = ZOO / default_model_name()
    assert (FOLDER / "model.safetensors").stat().st_size <= 1.2 * (default / "model.safetensors").stat().st_size
    assert model.cfg.n_ctx >= 1024 and model.cfg.name == NAME
    assert default_model_name() != NAME  # the short model stays the default
    # same tokenizer, byte for byte: a prompt counts the same for both, so the refusal's pointer is exact
    assert (FOLDER / "tokenizer.json").read_bytes() == (default / "tokenizer.json").read_bytes()


def test_forward_and_cache_at_1000_tokens_match_a_float64_reference(model, long_prompt, reference):
    ref_logits, ref = reference
    names = [f"blocks.{layer}.{hook}" for layer in range(model.cfg.n_layers)
             for hook in ("attn.hook_pattern", "hook_resid_post")]
    with torch.no_grad():
        logits = model(long_prompt)
        cached_logits, cache = model.run_with_cache(long_prompt, names_filter=lambda n: n in names)
    assert logits.shape == (1, N_PROMPT, model.cfg.d_vocab)
    torch.testing.assert_close(logits.double(), ref_logits, rtol=1e-4, atol=2e-4)
    torch.testing.assert_close(cached_logits.double(), ref_logits, rtol=1e-4, atol=2e-4)
    for layer in range(model.cfg.n_layers):
        torch.testing.assert_close(cache[f"blocks.{layer}.attn.hook_pattern"].double(), ref[f"pattern.{layer}"],
                                   rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(cache[f"blocks.{layer}.hook_resid_post"].double(), ref[f"resid_post.{layer}"],
                                   rtol=1e-4, atol=2e-4)


def test_logit_lens_and_attention_analyzer_at_1000_tokens(model, long_prompt, reference):
    from interp.analysis.attention import attention_patterns
    from interp.analysis.logit_lens import logit_lens

    ref_logits, ref = reference
    lens = logit_lens(model, long_prompt, k=1, target="next")
    last = lens[lens.layer == model.cfg.n_layers].sort_values("position")
    assert len(last) == N_PROMPT and lens.layer.nunique() == model.cfg.n_layers + 1
    ref_prob = ref_logits[0].softmax(-1)
    torch.testing.assert_close(torch.tensor(last.prob.to_numpy()), ref_prob.max(-1).values, rtol=1e-4, atol=1e-5)
    nxt = long_prompt[0, 1:]
    target = torch.tensor(last.target_prob.to_numpy()[:-1])  # the last position has no next token
    torch.testing.assert_close(target, ref_prob[:-1].gather(-1, nxt[:, None]).squeeze(-1), rtol=1e-4, atol=1e-5)

    layer, head = 1, 3  # the induction head of the model this one continues (its card measures it)
    df = attention_patterns(model, long_prompt, layers=layer, heads=head)
    assert len(df) == N_PROMPT * (N_PROMPT + 1) // 2
    weights = torch.zeros(N_PROMPT, N_PROMPT, dtype=torch.float64)
    weights[torch.tensor(df.query_pos.to_numpy()), torch.tensor(df.key_pos.to_numpy())] = torch.tensor(df.weight.to_numpy())
    torch.testing.assert_close(weights, ref[f"pattern.{layer}"][0, head], rtol=1e-4, atol=1e-5)


def test_card_loss_by_position_is_true_and_flat_past_256(model, heldout_ids):
    """Recompute the card's per-position-band losses with plain cross-entropy: the long model's loss past
    position 256 is no worse than before it (the short model's blows up there, the card shows)."""
    facts = json.loads((FOLDER / "recipe.json").read_text())["facts"]
    claimed = facts["position_loss"]
    n = model.cfg.n_ctx
    n_windows = (len(heldout_ids) - 1) // n
    assert claimed["length"] == n and claimed["windows"] == n_windows >= 8
    nll = []
    with torch.no_grad():
        for lo in range(0, n_windows, 4):
            rows = torch.stack([heldout_ids[i * n: i * n + n + 1] for i in range(lo, min(n_windows, lo + 4))])
            nll.append(F.cross_entropy(model(rows[:, :-1]).transpose(1, 2), rows[:, 1:], reduction="none"))
    per_pos = torch.cat(nll).double().mean(0)  # float32 per token, summed in float64: ample for a 0.01 check
    recipe = json.loads((FOLDER / "recipe.json").read_text())
    assert abs(float(per_pos.mean()) - recipe["heldout"]["loss_nats"]) < 0.01  # the same windows, every position
    for band, value in claimed["bands"].items():
        a, b = map(int, band.split("-"))
        assert abs(float(per_pos[a:b + 1].mean()) - value) < 0.01, band
    bands = claimed["bands"]
    assert bands["256-1023"] < bands["0-255"] and bands[f"1024-{n - 1}"] < bands["0-255"]
    short = facts["position_loss_compare"]["bands"]
    assert short[f"1024-{n - 1}"] > bands[f"1024-{n - 1}"] + 0.5  # why this model exists
    card = (FOLDER / "README.md").read_text()
    assert re.search(rf"{bands['1024-' + str(n - 1)]:.3f}", card)


def test_cli_accepts_1000_tokens_and_refuses_past_the_context_before_loading(monkeypatch, capsys, heldout_ids):
    from interp import cli
    from interp.report import inputs

    tok = Tokenizer.from_file(str(FOLDER / "tokenizer.json"))
    text = tok.decode(heldout_ids[:N_PROMPT].tolist())
    n_tokens = len(tok.encode(text, add_special_tokens=False).ids)
    assert 900 <= n_tokens <= 1100
    reached = []

    def no_loading(spec, *a, **k):  # stands in for the seconds of loading and analysis after the checks
        reached.append(spec)
        raise InterpError("stopped at loading")

    monkeypatch.setattr(inputs, "load_model", no_loading)
    # the long model accepts it: the command gets past every check to loading the model
    for argv in (["report", text, "--model", NAME, "--out", "r.html"], ["probe", "attention", text, "--model", NAME]):
        assert cli.main(argv) == 2
        err = capsys.readouterr().err
        assert "stopped at loading" in err and "n_ctx" not in err, err
    assert reached == [NAME, NAME]
    # the default model refuses it, naming its limit and the long model
    assert cli.main(["probe", "attention", text]) == 2
    err = capsys.readouterr().err
    assert "at most n_ctx=256 tokens" in err and f"--model {NAME}" in err, err
    # past the long model's own context: refused with its limit, before loading, and no model to point at
    too_long = tok.decode(heldout_ids[: 2 * 2048].tolist())
    for argv in (["report", too_long, "--model", NAME, "--out", "r.html"], ["probe", "attention", too_long, "--model", NAME]):
        assert cli.main(argv) == 2
        err = capsys.readouterr().err
        assert "at most n_ctx=2048 tokens" in err and "before loading the model" in err and "--model" not in err, err


def test_loaded_default_model_refuses_a_long_prompt_pointing_at_the_long_model(heldout_ids):
    """Front ends that load first (the dashboard) get the same pointer from encode_prompt."""
    from interp.report.inputs import encode_prompt

    tok = Tokenizer.from_file(str(FOLDER / "tokenizer.json"))
    text = tok.decode(heldout_ids[:N_PROMPT].tolist())
    with pytest.raises(InterpError, match=rf"at most n_ctx=256 tokens.*--model {NAME}"):
        encode_prompt(interp.load(), text)
