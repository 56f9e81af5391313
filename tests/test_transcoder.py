"""Transcoders (interp.analysis.sae.transcoder): training on a planted sparse MLP, an exact transcoder built by
hand from a ReLU MLP (FVE 1, CE recovered 1), splicing, the SAELens-style files and bad input."""

from __future__ import annotations

import json

import pytest
import torch

from interp.analysis.sae import (
    Transcoder,
    TranscoderConfig,
    evaluate_transcoders,
    load_sae,
    load_transcoders,
    save_sae,
    splice_transcoders,
    train_sae,
    train_transcoder,
)
from interp.errors import InterpError
from interp.model.config import DecoderConfig
from interp.model.transformer import HookedDecoder


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def planted_mlp(n=4096, d_in=16, d_out=12, n_feat=48, k=3, seed=0):
    """x -> y through a sparse hidden code: each row's k largest of n_feat ReLU units write fixed directions."""
    g = torch.Generator().manual_seed(seed)
    enc = torch.randn(d_in, n_feat, generator=g)
    dec = torch.randn(n_feat, d_out, generator=g)
    x = torch.randn(n, d_in, generator=g)
    pre = x @ enc
    v, i = pre.topk(k, -1)
    return x, torch.zeros_like(pre).scatter(-1, i, v.relu()) @ dec + 0.5


@pytest.mark.parametrize("arch,skip", [("topk", False), ("relu", True)])
def test_training_on_a_planted_sparse_mlp_reduces_the_error(arch, skip):
    x, y = planted_mlp(n_feat=24, k=2)
    kw = {"k": 2} if arch == "topk" else {"l1_coefficient": 0.05}
    tc = train_sae(x, 48, arch, target=y, skip=skip, steps=150, batch_size=256, lr=1e-2, progress=False,
                   log_every=10, **kw)
    assert isinstance(tc, Transcoder) and tc.W_dec.shape == (48, 12) and (tc.W_skip is not None) == skip
    # baseline: predicting the mean (FVE 0); the trained transcoder explains most of the variance
    with torch.no_grad():
        mse = (tc(x) - y).pow(2).sum(-1).mean()
    var = (y - y.mean(0)).pow(2).sum(-1).mean()
    assert float(mse) < 0.5 * float(var)
    assert tc.history.mse.iloc[-1] < 0.4 * tc.history.mse.iloc[0]


def _relu_model(gated=False):
    torch.manual_seed(0)
    m = HookedDecoder(DecoderConfig(d_vocab=40, n_ctx=16, d_model=16, n_layers=2, n_heads=2, d_mlp=24, act="relu",
                                    dtype="float64", name="tiny-relu"))
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return m


def _exact_transcoders(m):
    """A ReLU transcoder per layer equal to the MLP: x̂ = ln2.hook_normalized, MLP(x̂·w + b)."""
    out = []
    for layer, block in enumerate(m.blocks):
        w, b = block.ln2.w, block.ln2.b
        tc = Transcoder(TranscoderConfig(d_in=16, d_sae=24, architecture="relu", dtype="float64", metadata={
            "hook_name": f"blocks.{layer}.ln2.hook_normalized", "hook_name_out": f"blocks.{layer}.hook_mlp_out",
            "model_name": "tiny-relu"}))
        with torch.no_grad():
            tc.W_enc.copy_(w[:, None] * block.mlp.W_in)
            tc.b_enc.copy_(b @ block.mlp.W_in + block.mlp.b_in)
            tc.W_dec.copy_(block.mlp.W_out)
            tc.b_dec.copy_(block.mlp.b_out)
        out.append(tc)
    return out


def test_an_exact_transcoder_explains_everything_and_splices_without_change():
    m = _relu_model()
    tcs = _exact_transcoders(m)
    toks = torch.randint(0, 40, (3, 12), generator=torch.Generator().manual_seed(1))
    clean = m(toks)
    with splice_transcoders(m, tcs):
        torch.testing.assert_close(m(toks), clean, rtol=1e-10, atol=1e-10)
    ev = evaluate_transcoders(m, tcs, toks)
    torch.testing.assert_close(ev.layers.fve.tolist(), [1.0, 1.0], rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(ev.metrics["ce_loss_recovered"], 1.0, rtol=1e-9, atol=1e-9)
    # CE with every MLP zeroed, by hand
    zero = [(f"blocks.{l}.hook_mlp_out", lambda a, hook=None: torch.zeros_like(a)) for l in range(2)]
    logits = m.run_with_hooks(toks, fwd_hooks=zero).double()
    ce = -torch.log_softmax(logits[:, :-1], -1).gather(-1, toks[:, 1:, None]).mean()
    torch.testing.assert_close(ev.metrics["ce_zero_ablation"], float(ce))


def test_splice_error_term_and_feature_edit_are_exact():
    m = _relu_model()
    tcs = _exact_transcoders(m)
    with torch.no_grad():  # now imperfect: the error term must make up the difference
        for tc in tcs:
            tc.W_enc.mul_(0.7)
    toks = torch.randint(0, 40, (2, 10), generator=torch.Generator().manual_seed(2))
    clean = m(toks)
    with splice_transcoders(m, tcs, use_error_term=True):
        torch.testing.assert_close(m(toks), clean, rtol=1e-10, atol=1e-10)
    with splice_transcoders(m, tcs):
        assert not torch.allclose(m(toks), clean)

    def kill(acts, hook=None):
        acts = acts.clone()
        acts[..., 5] = 0.0
        return acts

    captured = {}
    with splice_transcoders(m, tcs, use_error_term=True), tcs[1].hooks(fwd_hooks=[("hook_sae_acts_post", kill)]):
        _, cache = m.run_with_cache(toks, names_filter=lambda n: n == "blocks.1.ln2.hook_normalized")
        edited = m(toks)
        captured["x"] = cache["blocks.1.ln2.hook_normalized"]
    a = tcs[1].encode(captured["x"])[..., 5:6]
    ref = m.run_with_hooks(toks, fwd_hooks=[("blocks.1.hook_mlp_out", lambda o, hook=None: o - a * tcs[1].W_dec[5])])
    torch.testing.assert_close(edited, ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("arch,skip,name", [("topk", True, "skip_topk_transcoder"), ("jumprelu", False,
                                                                                     "jumprelu_transcoder"),
                                            ("relu", True, "skip_transcoder")])
def test_saelens_style_files_round_trip(tmp_path, arch, skip, name):
    cfg = TranscoderConfig(d_in=8, d_out=6, d_sae=16, architecture=arch, k=4 if arch == "topk" else None, skip=skip,
                           metadata={"hook_name": "blocks.0.ln2.hook_normalized",
                                     "hook_name_out": "blocks.0.hook_mlp_out"})
    tc = Transcoder(cfg)
    with torch.no_grad():
        for p in tc.parameters():
            p.normal_()
    save_sae(tc, tmp_path / "tc")
    raw = json.loads((tmp_path / "tc" / "cfg.json").read_text())
    assert raw["architecture"] == name and raw["d_out"] == 6 and raw["apply_b_dec_to_input"] is False
    again = load_sae(tmp_path / "tc")
    assert isinstance(again, Transcoder) and again.cfg.hook_name_out == "blocks.0.hook_mlp_out"
    x = torch.randn(5, 8)
    torch.testing.assert_close(again(x), tc(x))
    assert [t.cfg.hook_name for t in load_transcoders(tmp_path)] == ["blocks.0.ln2.hook_normalized"]


def test_train_transcoder_from_a_model_and_resume(tmp_path):
    m = _relu_model().float()
    m.cfg.dtype = "float32"
    corpus = [torch.randint(0, 40, (16,), generator=torch.Generator().manual_seed(i)) for i in range(16)]
    kw = {"k": 2, "steps": 20, "batch_size": 64, "progress": False, "checkpoint_dir": tmp_path / "tc",
          "checkpoint_every": 10}
    tc = train_transcoder(m, 1, corpus, 32, input_hook="hook_resid_mid", skip=True, **kw)
    assert (tc.cfg.hook_name, tc.cfg.hook_name_out) == ("blocks.1.hook_resid_mid", "blocks.1.hook_mlp_out")
    again = train_transcoder(m, 1, corpus, 32, input_hook="hook_resid_mid", skip=True, **{**kw, "steps": 30})
    assert again.history.step.iloc[-1] == 30
    ev = evaluate_transcoders(m, [again], corpus[:4])
    assert ev.layers.layer.tolist() == [1] and 0 < ev.layers.l0.iloc[0] <= 2


def test_bad_input_is_named():
    x, y = planted_mlp(n=64)
    with pytest.raises(InterpError, match="target: must hold the rows of source"):
        train_sae(x, 8, "topk", k=2, target=y[:32], steps=1, progress=False)
    with pytest.raises(InterpError, match="skip: a skip term belongs to a transcoder"):
        train_sae(x, 8, "topk", k=2, skip=True, steps=1, progress=False)
    with pytest.raises(InterpError, match="d_out: must be an int >= 1"):
        TranscoderConfig(d_in=4, d_sae=8, architecture="relu", d_out=0)
    m = _relu_model()
    with pytest.raises(InterpError, match="input_hook: must be one of"):
        train_transcoder(m, 0, "text", 8, input_hook="hook_resid_pre")
    with pytest.raises(InterpError, match="layer: must be in \\[0, 2\\)"):
        train_transcoder(m, 2, "text", 8)
    tcs = _exact_transcoders(m)
    from interp.analysis.sae import evaluate_sae

    with pytest.raises(InterpError, match="this is a transcoder"):
        evaluate_sae(m, tcs[0], torch.zeros(1, 4, dtype=torch.long))
    tcs[1].cfg.metadata["hook_name_out"] = "blocks.1.hook_resid_post"
    with pytest.raises(InterpError, match="predicting blocks.{l}.hook_mlp_out"):
        evaluate_transcoders(m, tcs, torch.zeros(1, 4, dtype=torch.long))


def test_cli_train_transcoders_and_draw_a_circuit(tmp_path, capsys):
    from conftest import saved_word_model_and_corpus

    from interp.analysis.circuits.graph import load_graph
    from interp.cli import main

    _, model_dir, corpus = saved_word_model_and_corpus(tmp_path, n_docs=30, n_layers=2)
    out = tmp_path / "tc"
    base = ["--model", str(model_dir), "--quiet"]
    rc = main(["sae", "train", "--transcoder", "--skip", *base, "--corpus", str(corpus), "--out", str(out),
               "--steps", "10", "--batch-size", "64", "--d-sae", "32", "--k", "2"])
    assert rc == 0 and sorted(p.name for p in out.iterdir() if p.is_dir()) == ["blocks.0.hook_mlp_out",
                                                                                "blocks.1.hook_mlp_out"]
    ev = json.loads((out / "eval.json").read_text())
    assert [r["layer"] for r in ev["layers"]] == [0, 1] and "ce_loss_recovered" in ev["metrics"]
    html, js = tmp_path / "g.html", tmp_path / "g.json"
    rc = main(["circuit", "t5 t7 t9 t11", *base, "--transcoders", str(out), "--out", str(html), "--json", str(js)])
    assert rc == 0 and "<svg" in html.read_text() and "http" not in html.read_text().replace("http://www.w3.org", "")
    rc = main(["sae", "eval", "--sae", str(out / "blocks.1.hook_mlp_out"), *base, "--corpus", str(corpus),
               "--json", str(tmp_path / "e.json")])
    assert rc == 0 and json.loads((tmp_path / "e.json").read_text())["per layer"][0]["layer"] == 1
    graph = load_graph(js)
    assert graph.info["str_tokens"] and (graph.nodes.kind == "token").sum() == len(graph.info["tokens"])
    capsys.readouterr()
    assert main(["circuit", "t5 t7", *base, "--transcoders", str(tmp_path / "nope")]) == 2
    assert "--transcoders" in capsys.readouterr().err
    assert main(["circuit", "t5 t7", *base, "--transcoders", str(out), "--out", str(html)]) == 2
    assert "--force" in capsys.readouterr().err
