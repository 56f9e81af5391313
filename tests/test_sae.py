"""Sparse autoencoders (interp.analysis.sae): recovery of planted features, splicing, evaluation, SAELens format.

References are independent of the code under test: planted dictionaries and the toy model of superposition
(known true directions), hand-written TransformerLens hooks and float64 cross-entropy, SAELens checkpoints
written here by hand in its documented layout, and a brute-force scan of every activation.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from interp.analysis.sae import (
    SAE,
    SAEConfig,
    ce_loss_recovered,
    decoder_orthogonality,
    evaluate_sae,
    feature_activations,
    feature_logit_effects,
    feature_top_contexts,
    geometric_median,
    load_sae,
    sae_metrics,
    save_sae,
    splice_sae,
    train_sae,
)
from interp.errors import InterpError
from interp.model.config import DecoderConfig
from interp.model.transformer import HookedDecoder

HOOK = "blocks.0.hook_resid_post"


@pytest.fixture(autouse=True)
def _one_thread():
    # Small matmuls on a shared CPU run several times faster on one thread than fighting over two.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def planted(n_dirs=64, d=32, n=20_000, active=3, seed=0):
    """Rows that are sparse non-negative combinations of ``n_dirs`` random unit directions in R^d."""
    g = torch.Generator().manual_seed(seed)
    dirs = torch.randn(n_dirs, d, generator=g)
    dirs /= dirs.norm(dim=-1, keepdim=True)
    idx = torch.rand(n, n_dirs, generator=g).argsort(-1)[:, :active]
    coef = torch.zeros(n, n_dirs).scatter(1, idx, 0.5 + torch.rand(n, active, generator=g))
    return coef @ dirs, dirs


def recovery(sae: SAE, dirs: torch.Tensor) -> float:
    """Mean over true directions of the best |cosine| with a decoder row."""
    w = sae.W_dec.detach().double()
    w = w / w.norm(dim=-1, keepdim=True)
    return float((dirs.double() @ w.T).max(-1).values.mean())


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    cfg = DecoderConfig(d_vocab=50, n_ctx=16, d_model=16, n_layers=2, n_heads=2, positional="learned", name="tiny")
    return HookedDecoder(cfg).eval()


def corpus_tokens(n=24, pos=16, seed=1):
    return torch.randint(1, 50, (n, pos), generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def tiny_sae(tiny):
    torch.manual_seed(3)
    sae = train_sae((tiny, HOOK, corpus_tokens()), 48, "relu", steps=60, batch_size=64, progress=False)
    with torch.no_grad():  # a trained SAE on random data is near-silent; open the encoder so features fire
        sae.b_enc.add_(0.05)
    return sae


# ----------------------------------------------------------------------------------------------------
# recovery of known features


ARCH_OPTIONS = {
    "topk": {"k": 3},
    "relu": {"l1_coefficient": 2.0, "lr": 3e-3},
    "jumprelu": {"l0_coefficient": 0.2, "jumprelu_init_threshold": 1.0, "lr": 3e-3},
}


@pytest.mark.parametrize("arch", ["topk", "relu", "jumprelu"])
def test_planted_dictionary_recovered(arch):
    x, dirs = planted()
    steps = 300 if arch == "topk" else 800
    sae = train_sae(x, 128, arch, steps=steps, batch_size=256, seed=0, progress=False, **ARCH_OPTIONS[arch])
    assert recovery(sae, dirs) >= 0.9
    m = sae_metrics(sae, x)
    assert m["fve"] > 0.7 and m["l0"] < 16


def test_toy_model_features_recovered():
    from interp.analysis.superposition import train_toy_model

    toy = train_toy_model(n_features=12, d_hidden=4, feature_probability=0.05, importance=0.9, steps=600, seed=0,
                          batch_size=512)
    w = torch.tensor(toy.W)  # [d_hidden, n_features]
    represented = torch.tensor(toy.feature_norms > 0.5)
    assert int(represented.sum()) > 4  # superposition: more features stored than dimensions
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(20_000, 12, generator=g) < 0.05) * torch.rand(20_000, 12, generator=g)
    h = (x.double() @ w.T).float()  # the toy model's hidden layer
    sae = train_sae(h, 24, "topk", k=1, steps=400, batch_size=256, progress=False)
    true = (w.T / w.T.norm(dim=-1, keepdim=True).clamp_min(1e-12))[represented]
    assert recovery(sae, true) >= 0.9


# ----------------------------------------------------------------------------------------------------
# the module, splicing and evaluation


def test_encode_decode_match_hand_formulas():
    torch.manual_seed(0)
    x = torch.randn(7, 8, dtype=torch.float64)
    for arch, extra in (("relu", {}), ("topk", {"k": 3}), ("jumprelu", {})):
        sae = SAE(SAEConfig(d_in=8, d_sae=20, architecture=arch, dtype="float64", **extra))
        with torch.no_grad():
            for p in sae.parameters():
                p.add_(0.1 * torch.randn_like(p))
        pre = (x - sae.b_dec) @ sae.W_enc + sae.b_enc
        if arch == "relu":
            want = pre.clamp_min(0)
        elif arch == "topk":
            kth = pre.sort(-1, descending=True).values[:, 2:3]
            want = torch.where(pre >= kth, pre.clamp_min(0), torch.zeros_like(pre))
        else:
            want = torch.where(pre > sae.threshold, pre, torch.zeros_like(pre))
        f = sae.encode(x)
        torch.testing.assert_close(f, want)
        torch.testing.assert_close(sae(x), f @ sae.W_dec + sae.b_dec)


def test_jumprelu_pseudo_derivative():
    """The threshold's gradient is the rectangle-kernel estimate of Rajamanoharan et al. (2024), eq. 11-12."""
    sae = SAE(SAEConfig(d_in=2, d_sae=1, architecture="jumprelu", dtype="float64", jumprelu_bandwidth=0.5))
    th = float(sae.threshold.detach())
    z = torch.tensor([[th - 0.1], [th + 0.2], [th + 2.0]], dtype=torch.float64, requires_grad=True)
    out = sae.activate(z).sum()
    out.backward()
    # d/dθ of z·H(z-θ) ≈ -(θ/ε) K((z-θ)/ε): rows inside the window (|z-θ| < ε/2 = 0.25) count
    d_theta = -(th / 0.5) * 2  # two rows inside the window
    torch.testing.assert_close(sae.log_threshold.grad, torch.tensor([d_theta * th], dtype=torch.float64))
    torch.testing.assert_close(z.grad, torch.tensor([[0.0], [1.0], [1.0]], dtype=torch.float64))


def test_geometric_median_beats_mean_under_outliers():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(400, 5, generator=g)
    x[:20] += 1000.0
    med = geometric_median(x)
    assert float(med.norm()) < 0.5 < float(x.mean(0).norm())
    # first-order optimality: the unit vectors towards the points sum to ~0 at the geometric median
    u = (x.double() - med) / (x.double() - med).norm(dim=-1, keepdim=True)
    assert float(u.sum(0).norm()) < 1e-3 * len(x)


def test_splice_with_error_term_reproduces_logits(tiny, tiny_sae):
    toks = corpus_tokens(3, 12, seed=5)
    clean = tiny(toks)
    with splice_sae(tiny, tiny_sae, use_error_term=True):
        spliced = tiny(toks)
    torch.testing.assert_close(spliced, clean, rtol=0, atol=0)
    # without the error term the hook sees the reconstruction: same as a hand-written replacement hook
    def replace(act, hook):
        f = torch.relu((act - tiny_sae.b_dec) @ tiny_sae.W_enc + tiny_sae.b_enc)
        return f @ tiny_sae.W_dec + tiny_sae.b_dec

    with splice_sae(tiny, tiny_sae):
        recon = tiny(toks)
    torch.testing.assert_close(recon, tiny.run_with_hooks(toks, fwd_hooks=[(HOOK, replace)]))
    assert not torch.allclose(recon, clean)


def test_feature_ablation_through_splice_is_exact(tiny, tiny_sae):
    """Zeroing one feature with the error term kept = subtracting that feature's decoder write by hand."""
    toks = corpus_tokens(2, 12, seed=6)
    feat = int(feature_activations(tiny, tiny_sae, toks).feature.value_counts().index[0])

    def ablate(f, hook):
        f = f.clone()
        f[..., feat] = 0.0
        return f

    with tiny_sae.hooks(fwd_hooks=[("hook_sae_acts_post", ablate)]), splice_sae(tiny, tiny_sae, use_error_term=True):
        patched = tiny(toks)

    def by_hand(act, hook):
        f = torch.relu((act - tiny_sae.b_dec) @ tiny_sae.W_enc + tiny_sae.b_enc)
        return act - f[..., feat, None] * tiny_sae.W_dec[feat]

    torch.testing.assert_close(patched, tiny.run_with_hooks(toks, fwd_hooks=[(HOOK, by_hand)]), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(patched, tiny(toks))


def test_ce_loss_recovered_matches_independent_computation(tiny, tiny_sae):
    toks = corpus_tokens(6, 16, seed=7)

    def ce(hook_fn=None):
        logits = tiny.run_with_hooks(toks, fwd_hooks=[(HOOK, hook_fn)] if hook_fn else []).double()
        return torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 50), toks[:, 1:].reshape(-1)).item()

    w = {k: v.detach().double() for k, v in tiny_sae.saelens_state_dict().items()}

    def recon(act, hook):
        f = torch.relu((act.double() - w["b_dec"]) @ w["W_enc"] + w["b_enc"])
        return (f @ w["W_dec"] + w["b_dec"]).float()

    clean, spliced, zero = ce(), ce(recon), ce(lambda a, hook: torch.zeros_like(a))
    got = ce_loss_recovered(tiny, tiny_sae, toks, batch_size=4)
    want = {"ce_clean": clean, "ce_sae": spliced, "ce_zero_ablation": zero,
            "ce_loss_recovered": (zero - spliced) / (zero - clean)}
    for key, v in want.items():
        torch.testing.assert_close(got[key], v, rtol=1e-5, atol=1e-6)


def test_metrics_match_hand_computation(tiny, tiny_sae):
    toks = corpus_tokens(4, 16, seed=8)
    _, cache = tiny.run_with_cache(toks, names_filter=HOOK)
    x = cache[HOOK].reshape(-1, 16).double()
    f = tiny_sae.encode(x.float()).double().detach()
    xh = tiny_sae.decode(f.float()).double().detach()
    ev = evaluate_sae(tiny, tiny_sae, toks, batch_size=3, dense_threshold=0.2)
    m = ev.metrics
    torch.testing.assert_close(m["l0"], float((f > 0).sum(-1).double().mean()))
    torch.testing.assert_close(m["fve"], float(1 - (x - xh).pow(2).sum() / (x - x.mean(0)).pow(2).sum()))
    freq = (f > 0).double().mean(0)
    torch.testing.assert_close(m["dead_frac"], float((freq == 0).double().mean()))
    torch.testing.assert_close(m["dense_frac"], float((freq > 0.2).double().mean()))
    torch.testing.assert_close(ev.latents.frequency.to_numpy(), freq.numpy())
    ce = ce_loss_recovered(tiny, tiny_sae, toks)
    torch.testing.assert_close(m["ce_loss_recovered"], ce["ce_loss_recovered"], rtol=1e-6, atol=1e-8)
    one = sae_metrics(tiny_sae, x[:1].float())  # one token has no variance to explain: NaN, not a crash
    assert one["n_tokens"] == 1 and one["fve"] != one["fve"]


# ----------------------------------------------------------------------------------------------------
# SAELens format


@pytest.mark.parametrize("arch", ["relu", "topk", "jumprelu"])
def test_saelens_round_trip(tmp_path, arch):
    sae = SAE(SAEConfig(d_in=8, d_sae=24, architecture=arch, k=4 if arch == "topk" else None,
                        metadata={"hook_name": HOOK, "model_name": "tiny"}))
    with torch.no_grad():
        for p in sae.parameters():
            p.add_(0.1 * torch.randn_like(p))
    save_sae(sae, tmp_path / "s")
    cfg = json.loads((tmp_path / "s" / "cfg.json").read_text())
    assert cfg["architecture"] == {"relu": "standard"}.get(arch, arch) and cfg["metadata"]["hook_name"] == HOOK
    again = load_sae(tmp_path / "s")
    x = torch.randn(5, 8)
    torch.testing.assert_close(again.encode(x), sae.encode(x))
    torch.testing.assert_close(again(x), sae(x))
    with pytest.raises(InterpError, match="overwrite=True"):
        save_sae(sae, tmp_path / "s")


def _write_saelens(folder, cfg: dict, tensors: dict):
    folder.mkdir()
    (folder / "cfg.json").write_text(json.dumps(cfg))
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(folder / "sae_weights.safetensors"))
    return folder


def test_loads_checkpoints_in_saelens_documented_layouts(tmp_path):
    g = torch.Generator().manual_seed(0)
    d_in, d_sae = 6, 10
    w = {"W_enc": torch.randn(d_in, d_sae, generator=g), "W_dec": torch.randn(d_sae, d_in, generator=g),
         "b_enc": torch.randn(d_sae, generator=g), "b_dec": torch.randn(d_in, generator=g)}
    x = torch.randn(4, d_in, generator=g)
    pre = (x - w["b_dec"]) @ w["W_enc"] + w["b_enc"]

    # SAELens 6.x (SAE.save_model): metadata dict, architecture "standard"
    v6 = {"d_in": d_in, "d_sae": d_sae, "dtype": "float32", "device": "cpu", "apply_b_dec_to_input": True,
          "normalize_activations": "none", "reshape_activations": "none", "architecture": "standard",
          "metadata": {"sae_lens_version": "6.18.0", "model_name": "gpt2", "hook_name": "blocks.3.hook_resid_pre",
                       "hook_head_index": None, "context_size": 128, "prepend_bos": True}}
    sae = load_sae(_write_saelens(tmp_path / "v6", v6, w))
    assert sae.cfg.architecture == "relu" and sae.cfg.hook_name == "blocks.3.hook_resid_pre"
    torch.testing.assert_close(sae.encode(x), pre.relu())
    torch.testing.assert_close(sae.decode(sae.encode(x)), pre.relu() @ w["W_dec"] + w["b_dec"])

    # SAELens 6.x JumpReLU: a "threshold" tensor
    th = torch.rand(d_sae, generator=g)
    sae = load_sae(_write_saelens(tmp_path / "jr", {**v6, "architecture": "jumprelu"}, {**w, "threshold": th}))
    torch.testing.assert_close(sae.encode(x), torch.where(pre > th, pre, torch.zeros_like(pre)))

    # SAELens < 6: top-level hook_point and activation_fn_str / activation_fn_kwargs for TopK
    old = {"d_in": d_in, "d_sae": d_sae, "dtype": "torch.float32", "device": "cpu", "model_name": "gpt2",
           "hook_point": "blocks.1.hook_resid_post", "hook_point_layer": 1, "hook_point_head_index": None,
           "activation_fn_str": "topk", "activation_fn_kwargs": {"k": 2}, "apply_b_dec_to_input": True,
           "normalize_activations": "none", "context_size": 64, "sae_lens_training_version": "3.0.0"}
    sae = load_sae(_write_saelens(tmp_path / "old", old, w))
    assert sae.cfg.architecture == "topk" and sae.cfg.k == 2 and sae.cfg.hook_name == "blocks.1.hook_resid_post"
    f = sae.encode(x)
    assert int((f > 0).sum(-1).max()) <= 2
    torch.testing.assert_close(f.max(-1).values, pre.max(-1).values.clamp_min(0))

    # what cannot be represented is refused by name, not loaded wrong
    # (layer_norm and gated SAEs load: tests/test_sae_saelens.py; a gated cfg needs the gated tensors)
    with pytest.raises(InterpError, match="normalize_activations='covariance_whitening'"):
        load_sae(_write_saelens(tmp_path / "norm", {**v6, "normalize_activations": "covariance_whitening"}, w))
    with pytest.raises(InterpError, match=r"missing tensors \['b_gate', 'b_mag', 'r_mag'\]"):
        load_sae(_write_saelens(tmp_path / "gated", {**v6, "architecture": "gated"}, w))
    with pytest.raises(InterpError, match="W_enc has shape"):
        load_sae(_write_saelens(tmp_path / "shape", {**v6, "d_sae": d_sae + 1}, w))


# ----------------------------------------------------------------------------------------------------
# training: sources, checkpoints, time budget


def test_train_from_model_and_disk_sources(tmp_path, tiny):
    from interp.analysis.sae import model_activations

    toks = corpus_tokens()
    acts = model_activations(tiny, HOOK, toks)
    _, cache = tiny.run_with_cache(toks, names_filter=HOOK)
    torch.testing.assert_close(acts, cache[HOOK].reshape(-1, 16))
    save_file({"activations": acts[:200].contiguous()}, str(tmp_path / "a.safetensors"))
    save_file({"activations": acts[200:].contiguous()}, str(tmp_path / "b.safetensors"))
    opts = {"steps": 30, "batch_size": 32, "progress": False, "seed": 2}
    from_disk = train_sae(tmp_path, 32, "topk", k=4, **opts)
    from interp.data import write_activation_dataset

    write_activation_dataset(tiny, toks, [HOOK], tmp_path / "ds", shard_docs=5, progress=False)
    from_dataset = train_sae((tmp_path / "ds", HOOK), 32, "topk", k=4, **opts)
    assert from_dataset.cfg.hook_name == HOOK
    from interp.analysis.sae import as_source

    src = as_source((tmp_path / "ds", HOOK))
    assert src.n == acts.shape[0] and len(src.sizes) == 5
    torch.testing.assert_close(torch.cat([src.shard(i) for i in range(5)]), acts)
    from_model = train_sae((tiny, HOOK, toks), 32, "topk", k=4, **opts)
    assert from_model.cfg.hook_name == HOOK and from_model.cfg.metadata["model_name"] == "tiny"
    assert len(from_disk.history) and from_disk.W_dec.shape == (32, 16)
    torch.testing.assert_close(from_disk.W_dec.norm(dim=-1), torch.ones(32), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch, extra", [
    ("topk", {"k": 3}),
    ("relu", {"resample_dead_every": 10, "b_enc_init": [-10.0] * 32 + [0.0] * 32}),  # resamples at 10, 20, 30
])
def test_checkpoint_resume_matches_uninterrupted_run(tmp_path, monkeypatch, arch, extra):
    from interp.analysis.sae import train as train_mod

    x, _ = planted(n=3000, seed=4)
    opts = {"steps": 40, "batch_size": 128, "checkpoint_every": 20, "progress": False, "log_every": 10, **extra}
    full = train_sae(x, 64, arch, checkpoint_dir=tmp_path / "full", **opts)

    real = train_mod._Trainer.train_step

    def crash_at_30(self, *a, **kw):
        if self.step == 30:
            raise KeyboardInterrupt
        return real(self, *a, **kw)

    monkeypatch.setattr(train_mod._Trainer, "train_step", crash_at_30)
    with pytest.raises(KeyboardInterrupt):
        train_sae(x, 64, arch, checkpoint_dir=tmp_path / "cut", **opts)
    assert json.loads((tmp_path / "cut" / "trainer_state.json").read_text())["step"] == 20
    monkeypatch.setattr(train_mod._Trainer, "train_step", real)
    resumed = train_sae(x, 64, arch, checkpoint_dir=tmp_path / "cut", **opts)
    for name in ("W_enc", "W_dec", "b_enc", "b_dec"):
        torch.testing.assert_close(getattr(resumed, name), getattr(full, name), rtol=1e-5, atol=1e-6)
    assert resumed.history.step.tolist() == full.history.step.tolist()
    assert resumed.resamples.values.tolist() == full.resamples.values.tolist()
    if "resample_dead_every" in extra:
        assert full.resamples.resampled.iloc[0] == 32
    with pytest.raises(InterpError, match="other options"):
        train_sae(x, 64, arch, checkpoint_dir=tmp_path / "cut", **{**opts, "seed": 1})


def test_resampling_revives_dead_latents_and_recovers_more():
    """Anthropic's resampling: a ReLU SAE whose encoder biases start at -10 for 96 of its 128 latents never
    fires them (ReLU passes no gradient), so only 32 latents learn 64 planted directions. Resampling at step
    100 (same seed, same data) re-initialises exactly those 96 and the dictionary is recovered."""
    x, dirs = planted()
    bad = torch.zeros(128)
    bad[:96] = -10.0
    opts = {"steps": 800, "batch_size": 256, "seed": 0, "progress": False, "l1_coefficient": 2.0, "lr": 3e-3,
            "b_enc_init": bad}
    off = train_sae(x, 128, "relu", **opts)
    on = train_sae(x, 128, "relu", resample_dead_every=100, **opts)
    m_off, m_on = sae_metrics(off, x), sae_metrics(on, x)
    assert m_off["dead_frac"] >= 0.7 and recovery(off, dirs) < 0.85  # the bad start stays dead
    assert on.resamples.resampled.iloc[0] == 96 and on.resamples.resampled.iloc[1:].sum() < 10
    assert m_on["dead_frac"] <= 0.02 and recovery(on, dirs) >= 0.9
    assert m_on["fve"] > m_off["fve"] + 0.1
    assert off.resamples.empty
    with pytest.raises(InterpError, match="resample_dead_every: resampling is for ReLU"):
        train_sae(x, 16, "topk", k=2, steps=2, resample_dead_every=1, progress=False)
    with pytest.raises(InterpError, match="b_enc_init: must be None, a finite number or 16"):
        train_sae(x, 16, "relu", steps=2, b_enc_init=[0.0, 1.0], progress=False)


def test_time_budget_stops_and_saves(tmp_path):
    x, _ = planted(n=2000)
    sae = train_sae(x, 64, "relu", steps=10**6, batch_size=64, time_budget=1.0, checkpoint_dir=tmp_path / "t",
                    progress=False, log_every=1)
    assert sae.stopped_early and 0 < sae.history.step.iloc[-1] < 10**6
    assert sae.history.elapsed_s.iloc[-1] < 30
    again = load_sae(tmp_path / "t")
    torch.testing.assert_close(again.W_dec, sae.W_dec)


def test_bad_input_is_named():
    x = torch.randn(100, 8)
    for kwargs, match in (({"d_sae": 0}, "d_sae"), ({"d_sae": 8, "architecture": "gated"}, "architecture"),
                          ({"d_sae": 8, "k": 9}, "k: must be"), ({"d_sae": 8, "time_budget": -1}, "time_budget")):
        with pytest.raises(InterpError, match=match):
            train_sae(x, progress=False, **kwargs)
    with pytest.raises(InterpError, match="source"):
        train_sae(torch.zeros(10, 4, dtype=torch.long), 8, progress=False)
    with pytest.raises(InterpError, match=r"d_in=8"):
        SAE(SAEConfig(d_in=8, d_sae=16, architecture="relu")).encode(torch.randn(3, 5))
    with pytest.raises(InterpError, match="not an SAE folder"):
        load_sae("/nonexistent/folder")


# ----------------------------------------------------------------------------------------------------
# features


def test_top_contexts_match_brute_force(tiny, tiny_sae):
    toks = corpus_tokens(10, 16, seed=9)
    df = feature_top_contexts(tiny, tiny_sae, toks, k=3, batch_size=4)
    _, cache = tiny.run_with_cache(toks, names_filter=HOOK)
    f = tiny_sae.encode(cache[HOOK]).detach()  # [docs, pos, d_sae]
    for feat, g in list(df.groupby("feature"))[:5]:
        top = f[..., feat].reshape(-1).topk(3).values
        torch.testing.assert_close(torch.tensor(g.sort_values("rank").activation.to_numpy()),
                                   top.double()[: len(g)], rtol=1e-5, atol=1e-6)
        row = g[g["rank"] == 1].iloc[0]
        assert toks[row.doc, row.position] == row.token_id
        torch.testing.assert_close(float(f[row.doc, row.position, feat]), row.activation, rtol=1e-5, atol=1e-6)
    assert set(feature_top_contexts(tiny, tiny_sae, toks, features=[1, 2], k=2).feature) <= {1, 2}


def test_logit_effects_are_centred_decoder_through_unembedding(tiny, tiny_sae):
    eff = feature_logit_effects(tiny, tiny_sae, 5, k=4)
    d = tiny_sae.W_dec[5].detach().double()
    d = (d - d.mean()) * tiny.ln_final.w.detach().double()
    logits = d @ tiny.W_U.detach().double()
    logits -= logits.mean()
    top = logits.topk(4)
    got = eff[eff.direction == "top"]
    assert got.token_id.tolist() == top.indices.tolist()
    torch.testing.assert_close(torch.tensor(got.logit.to_numpy()), top.values)


def test_decoder_orthogonality_against_random_baseline():
    sae = SAE(SAEConfig(d_in=32, d_sae=256, architecture="relu"))  # random unit decoder rows
    row = decoder_orthogonality(sae, max_pairs=20_000).iloc[0]
    assert row["set"] == "W_dec" and row["count"] == 256 and row["dim"] == 32
    assert abs(row.mean_abs_cos - row.baseline_mean_abs_cos) < 0.1 * row.baseline_mean_abs_cos
    _x, dirs = planted(n_dirs=64, d=32)
    planted_sae = SAE(SAEConfig(d_in=32, d_sae=64, architecture="relu"))
    with torch.no_grad():
        planted_sae.W_dec.copy_(dirs)
    assert decoder_orthogonality(planted_sae).mean_abs_cos.iloc[0] == pytest.approx(
        float((dirs @ dirs.T).abs().triu(1).sum() / (64 * 63 / 2)), rel=1e-6)


# ----------------------------------------------------------------------------------------------------
# the command line


def test_cli_train_eval_features(tmp_path, capsys):
    from conftest import saved_word_model_and_corpus

    from interp.cli import main

    _, model_dir, corpus = saved_word_model_and_corpus(tmp_path)
    out = tmp_path / "sae"
    base = ["--model", str(model_dir), "--corpus", str(corpus), "--quiet"]
    rc = main(["sae", "train", *base, "--out", str(out), "--steps", "20", "--batch-size", "64", "--d-sae", "32",
               "--k", "2"])
    assert rc == 0 and (out / "cfg.json").is_file() and (out / "eval.json").is_file()
    metrics = json.loads((out / "eval.json").read_text())
    assert metrics["n_tokens"] > 0 and metrics["l0"] <= 2
    rc = main(["sae", "eval", "--sae", str(out), *base, "--json", str(tmp_path / "e.json")])
    tables = json.loads((tmp_path / "e.json").read_text())
    assert rc == 0 and {r["metric"] for r in tables["evaluation"]} >= {"l0", "fve", "ce_loss_recovered"}
    rc = main(["sae", "features", "--sae", str(out), *base, "--feature", "0", "1", "--json", str(tmp_path / "f.json")])
    tables = json.loads((tmp_path / "f.json").read_text())
    assert rc == 0 and {r["feature"] for r in tables["logit effects"]} == {0, 1}
    capsys.readouterr()
    assert main(["sae", "eval", "--sae", str(tmp_path / "nope"), *base]) == 2
    assert "not an SAE folder" in capsys.readouterr().err
    assert main(["sae", "train", *base, "--out", str(out), "--steps", "20", "--d-sae", "48"]) == 2
    assert "--force" in capsys.readouterr().err


def test_cli_time_budget_bounds_every_phase(tmp_path):
    """A planted budget of 0 s: every phase does its minimum, and the 'time spent' table accounts for each.

    Collection stops after its first batch (16 training paragraphs), training after one step, evaluation after
    its first batch (8 paragraphs, or the held-out tail's fewer); every paragraph is the same length, so those
    are whole-paragraph token counts."""
    from conftest import saved_word_model_and_corpus

    from interp.cli import main
    from interp.report.sae import read_corpus

    model, model_dir, corpus = saved_word_model_and_corpus(tmp_path)
    per_doc = model.to_tokens(corpus.read_text().split("\n\n")[0]).shape[1]
    n_held = len(read_corpus(model, str(corpus), "eval", 0.1).strip().split("\n\n"))
    assert 1 <= n_held < 8
    out, js = tmp_path / "sae", tmp_path / "t.json"
    rc = main(["sae", "train", "--model", str(model_dir), "--corpus", str(corpus), "--quiet", "--out", str(out),
               "--steps", "500", "--batch-size", "16", "--d-sae", "32", "--k", "2", "--time-budget", "0",
               "--json", str(js)])
    assert rc == 0
    spent = json.loads(js.read_text())["time spent"]
    assert [r["phase"] for r in spent] == ["load", "collect", "train", "evaluate", "total"]
    done = {r["phase"]: r["done"] for r in spent}
    assert done["collect"] == f"{16 * per_doc:,} tokens"
    assert done["train"] == "1 steps"
    assert done["evaluate"] == f"{n_held * per_doc:,} tokens"
    assert done["total"] == "budget 0 s"
    assert json.loads((out / "eval.json").read_text())["n_tokens"] == n_held * per_doc
    seconds = [r["seconds"] for r in spent]
    assert min(seconds) >= 0 and sum(seconds[:-1]) <= seconds[-1]
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["step"] == 1


def test_splice_composes_with_causal_tools(tiny, tiny_sae):
    """Activation patching runs unchanged with an error-term SAE spliced in, and sees a feature ablation."""
    from interp.analysis.causal import activation_patching

    clean, corrupted = corpus_tokens(1, 8, seed=10), corpus_tokens(1, 8, seed=11)
    opts = {"answer": 5, "wrong": 6, "where": "resid_pre", "bootstrap": 0}
    plain = activation_patching(tiny, clean, corrupted, **opts)
    with splice_sae(tiny, tiny_sae, use_error_term=True):
        spliced = activation_patching(tiny, clean, corrupted, **opts)
    torch.testing.assert_close(torch.tensor(spliced.effect.to_numpy()), torch.tensor(plain.effect.to_numpy()))
    with tiny_sae.hooks(fwd_hooks=[("hook_sae_acts_post", lambda f, hook: torch.zeros_like(f))]), \
            splice_sae(tiny, tiny_sae, use_error_term=True):
        ablated = activation_patching(tiny, clean, corrupted, **opts)
    assert not torch.allclose(torch.tensor(ablated.effect.to_numpy()), torch.tensor(plain.effect.to_numpy()))
