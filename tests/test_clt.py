"""Cross-layer transcoders (interp.analysis.sae.cross_layer) and attribution graphs through them.

References independent of the code under test:
* graphs: the local replacement model written out as a forward pass (``_FrozenCLT``): the clean run's norm
  scales and attention patterns replayed, and every MLP output replaced by the CLT's frozen features decoded
  *jointly* (``clt.decode`` of all layers' features, one einsum) plus the frozen error. An edge must equal
  the change in its target when its source alone is removed there; the graph code instead encodes layer by
  layer and gets edges from autograd.
* splicing: a forward pass whose MLP ``l`` returns ``clt.decode(clt.encode(inputs so far))[l]``.
* training: a planted CLT whose layer-0 features also write MLP 1 — which a per-layer transcoder, reading only
  layer 1, cannot explain.
* files: a circuit-tracer CLT folder written by hand from known tensors, against a float64 formula.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from test_circuits_graph import CASES, PROMPT, _drop, _model, _transcoders
from test_transcoder import _exact_transcoders, _relu_model

from interp.analysis.circuits.graph import attribution_graph, intervene
from interp.analysis.sae import (
    evaluate_transcoders,
    load_sae,
    load_transcoders,
    save_sae,
    splice_transcoders,
    train_sae,
)
from interp.analysis.sae.cross_layer import CrossLayerTranscoder, CrossLayerTranscoderConfig
from interp.errors import InterpError

ROOT = Path(__file__).resolve().parents[1]


def _clt(model, hook: str, arch: str, seed: int = 0, d_sae: int = 16) -> CrossLayerTranscoder:
    n, d = model.cfg.n_layers, model.cfg.d_model
    cfg = CrossLayerTranscoderConfig(
        d_in=d, d_sae=d_sae, n_layers=n, architecture=arch, k=5 if arch == "topk" else None, dtype="float64",
        metadata={"hook_name": [f"blocks.{i}.{hook}" for i in range(n)],
                  "hook_name_out": [f"blocks.{i}.hook_mlp_out" for i in range(n)], "model_name": model.cfg.name})
    clt = CrossLayerTranscoder(cfg)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in clt.parameters():  # every parameter non-trivial, cross-layer decoders included
            p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * 0.3)
        clt.W_enc.mul_(2.0)
        clt.W_dec.mul_(clt.decoder_mask)
        if arch == "jumprelu":
            clt.log_threshold.fill_(-2.0)
    return clt


def _stack(cache, names):
    return torch.stack([cache[n][0] for n in names], -2)  # [pos, layer, d]


class _FrozenCLT:
    """The CLT's local replacement model as a forward pass (module docstring)."""

    def __init__(self, model, clt, toks):
        self.model, self.clt, self.toks = model, clt, toks
        _, cache = model.run_with_cache(toks, attn_backend="eager")
        self.frozen = {n: cache[n] for n in cache if n.endswith((".hook_scale", "attn.hook_pattern"))}
        self.acts = clt.encode(_stack(cache, clt.cfg.hook_name))  # [pos, layer, d_sae]
        self.errors = _stack(cache, clt.cfg.hook_name_out) - clt.decode(self.acts)

    @torch.no_grad()
    def run(self, drop=None):
        model, clt, drop = self.model, self.clt, drop or ()
        acts, errors = self.acts.clone(), self.errors.clone()
        if drop and drop[0] == "feature":
            acts[drop[2], drop[1], drop[3]] = 0.0
        if drop and drop[0] == "error":
            errors[drop[2], drop[1]] = 0.0
        if drop and drop[0] == "all":
            acts, errors = torch.zeros_like(acts), torch.zeros_like(errors)
        mlp_out = clt.decode(acts) + errors  # [pos, layer, d]: every feature's writes to every later MLP
        inputs, unembed = {}, {}

        def embed(act, hook=None):
            act = act.clone()
            if drop and drop[0] in ("token", "all"):
                act[:, slice(None) if drop[0] == "all" else drop[1]] = 0.0
            return act

        def read(name):
            return lambda act, hook=None: inputs.__setitem__(name, act[0])

        fwd = [(n, lambda act, hook=None, v=v: v) for n, v in self.frozen.items()]
        fwd += [(n, embed) for n in ("hook_embed", "hook_pos_embed") if n in model.hook_dict]
        fwd += [(n, read(n)) for n in clt.cfg.hook_name]
        fwd += [(n, lambda act, hook=None, i=i: mlp_out[None, :, i]) for i, n in enumerate(clt.cfg.hook_name_out)]
        fwd.append(("hook_unembed", lambda act, hook=None: unembed.__setitem__("u", act)))
        model.run_with_hooks(self.toks, fwd_hooks=fwd)
        u = unembed["u"][0, -1] * model.cfg.logit_scale
        pre = clt.pre_activations(torch.stack([inputs[n] for n in clt.cfg.hook_name], -2))
        return pre, u - u.mean()


def _value(values, node):
    pre, logits = values
    if node.kind == "logit":
        return float(logits[int(node.token_id)])
    return float(pre[int(node.position), int(node.layer), int(node.feature)])


@pytest.mark.parametrize("case", list(CASES))
def test_clt_edges_are_ablation_effects_and_the_logit_is_complete(case):
    model = _model(case)
    _, _, hook, arch, _ = CASES[case]
    clt = _clt(model, hook, arch)
    g = attribution_graph(model, clt, PROMPT, prune=False, batch_size=16, max_logits=3)
    assert [t["cross_layer"] for t in g.info["transcoders"]] == [True, True]
    ref = _FrozenCLT(model, clt, PROMPT)
    clean, empty = ref.run(), ref.run(("all",))
    nodes = g.nodes
    for node in nodes[nodes.kind.isin(["feature", "logit"])].itertuples():
        torch.testing.assert_close(node.value, _value(clean, node), rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(node.bias, _value(empty, node), rtol=1e-7, atol=1e-9)
        # completeness: the target's value is its incoming edges plus the bias
        torch.testing.assert_close(float(g.adjacency[node.id].sum()) + node.bias, node.value, rtol=1e-9, atol=1e-9)
    edges = g.edges()
    edges = edges[edges.weight.abs() > 1e-6]
    kinds, layers = nodes.kind.to_numpy(), nodes.layer.to_numpy()
    picked = []
    for src_kind in ("feature", "error", "token"):
        for tgt_kind in ("feature", "logit"):
            sel = edges[(kinds[edges.source] == src_kind) & (kinds[edges.target] == tgt_kind)]
            picked += list(sel.head(2).itertuples())
    # layer-0 features into the logits: their edges carry the cross-layer writes into MLP 1
    picked += list(edges[(kinds[edges.source] == "feature") & (layers[edges.source] == 0)
                         & (kinds[edges.target] == "logit")].head(3).itertuples())
    assert len(picked) >= 10, f"{case}: too few edges to sample ({len(picked)})"
    for e in picked:
        src, tgt = nodes.iloc[e.source], nodes.iloc[e.target]
        effect = _value(clean, tgt) - _value(ref.run(_drop(src)), tgt)
        torch.testing.assert_close(effect, e.weight, rtol=1e-4, atol=1e-10)


def _as_clt(tcs, model) -> CrossLayerTranscoder:
    """Per-layer transcoders (no skip) as one CLT whose decoders to later layers are zero."""
    t0 = tcs[0].cfg
    n = len(tcs)
    clt = CrossLayerTranscoder(CrossLayerTranscoderConfig(
        d_in=t0.d_in, d_sae=t0.d_sae, n_layers=n, architecture=t0.architecture, k=t0.k, dtype="float64",
        metadata={"hook_name": [t.cfg.hook_name for t in tcs], "hook_name_out": [t.cfg.hook_name_out for t in tcs]}))
    with torch.no_grad():
        clt.W_dec.zero_()
        for i, t in enumerate(tcs):
            clt.W_enc[i], clt.b_enc[i], clt.b_dec[i], clt.W_dec[i, :, i] = t.W_enc, t.b_enc, t.b_dec, t.W_dec
            if t0.architecture == "jumprelu":
                clt.log_threshold[i] = t.log_threshold
    return clt


@pytest.mark.parametrize("case", ["llama", "gemma2"])
def test_a_clt_without_cross_layer_decoders_reproduces_the_per_layer_graph(case):
    model = _model(case)
    _, _, hook, arch, _ = CASES[case]
    tcs = _transcoders(model, hook, arch, skip=False)
    per_layer = attribution_graph(model, tcs, PROMPT, prune=False, max_logits=3)
    crossed = attribution_graph(model, _as_clt(tcs, model), PROMPT, prune=False, max_logits=3)
    cols = ["kind", "layer", "position", "feature", "token_id"]
    assert per_layer.nodes[cols].equals(crossed.nodes[cols])
    torch.testing.assert_close(crossed.adjacency, per_layer.adjacency, rtol=1e-9, atol=1e-12)
    for col in ("value", "bias", "activation", "influence"):
        torch.testing.assert_close(torch.tensor(crossed.nodes[col].astype(float).fillna(0).to_numpy()),
                                   torch.tensor(per_layer.nodes[col].astype(float).fillna(0).to_numpy()))


def _spliced_reference(model, clt, toks, edit=None, error_term=False):
    """Logits with MLP l returning ``clt.decode(clt.encode(inputs so far))[l]`` with ``edit`` applied to the
    features (and, with ``error_term``, plus the real MLP output minus the unedited prediction)."""
    inputs = []

    def read(act, hook=None):
        inputs.append(act)

    def write(i):
        def hook(act, hook=None):
            x = torch.stack(inputs + [torch.zeros_like(inputs[0])] * (clt.n_layers - len(inputs)), -2)
            f = clt.encode(x)  # layers not reached yet read zeros: their writes to MLP i are masked out
            out = clt.decode(edit(f) if edit is not None else f)[..., i, :]
            return out + (act - clt.decode(f)[..., i, :]) if error_term else out
        return hook

    fwd = [(n, read) for n in clt.cfg.hook_name] + [(n, write(i)) for i, n in enumerate(clt.cfg.hook_name_out)]
    with torch.no_grad():
        return model.run_with_hooks(toks, fwd_hooks=fwd)


def test_splice_evaluate_and_intervene_match_a_hand_written_forward():
    model = _relu_model()
    toks = torch.tensor([[1, 5, 9, 3, 22, 17, 8, 30], [2, 11, 4, 4, 39, 0, 13, 6]])
    clt = _clt(model, "ln2.hook_normalized", "relu", seed=3)
    with torch.no_grad():
        clean = model(toks)
        with splice_transcoders(model, clt):
            spliced = model(toks)
        with splice_transcoders(model, clt, use_error_term=True):
            unchanged = model(toks)
    torch.testing.assert_close(spliced, _spliced_reference(model, clt, toks), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(unchanged, clean, rtol=1e-9, atol=1e-9)
    assert float((spliced - clean).abs().max()) > 1e-2
    # per-layer FVE and L0 against the CLT's joint forward on the clean inputs; CE replaced against the splice
    ev = evaluate_transcoders(model, clt, toks, seq_len=8)
    _, cache = model.run_with_cache(toks)
    x = torch.stack([cache[n] for n in clt.cfg.hook_name], -2).flatten(0, 1)
    y = torch.stack([cache[n] for n in clt.cfg.hook_name_out], -2).flatten(0, 1)
    with torch.no_grad():
        f = clt.encode(x)
        pred = clt.decode(f)
    for i in range(2):
        resid = (y[:, i] - pred[:, i]).pow(2).sum()
        fve = 1 - resid / (y[:, i] - y[:, i].mean(0)).pow(2).sum()
        torch.testing.assert_close(float(ev.layers.fve[i]), float(fve), rtol=1e-7, atol=1e-9)
        torch.testing.assert_close(float(ev.layers.l0[i]), float((f[:, i] > 0).double().sum(-1).mean()))
    logp = torch.log_softmax(spliced[:, :-1].double(), -1).gather(-1, toks[:, 1:, None])
    torch.testing.assert_close(ev.metrics["ce_replaced"], float(-logp.mean()), rtol=1e-7, atol=1e-9)
    # an exact per-layer set as a CLT explains everything
    exact = _as_clt(_exact_transcoders(model), model)
    ev = evaluate_transcoders(model, exact, toks, seq_len=8)
    torch.testing.assert_close(ev.layers.fve.to_numpy().min(), 1.0, rtol=0, atol=1e-9)
    torch.testing.assert_close(ev.metrics["ce_loss_recovered"], 1.0, rtol=0, atol=1e-9)
    # setting a layer-0 feature reaches MLP 1 through its cross-layer decoder too
    def edit(f):
        f = f.clone()
        f[:, 2, 0, 5] = 3.0
        return f

    want = _spliced_reference(model, clt, toks[:1], edit=edit, error_term=True)[0, -1]
    got = intervene(model, clt, toks[:1], {(0, 2, 5): 3.0})
    torch.testing.assert_close(got.logits_after, want.double(), rtol=1e-8, atol=1e-9)
    assert float((got.logits_after - got.logits_before).abs().max()) > 1e-3


def _planted(n=3000, d=8, n_feat=24, k=2, seed=0):
    """Two layers; layer-0 features write MLP 0 *and* MLP 1, layer-1 features MLP 1 (inputs independent)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 2, d, generator=gen)
    enc = torch.randn(2, d, n_feat, generator=gen)
    dec = torch.randn(2, n_feat, 2, d, generator=gen) / 2
    dec[1, :, 0] = 0.0
    pre = torch.einsum("nli,lis->nls", x, enc)
    v, i = pre.topk(k, -1)
    f = torch.zeros_like(pre).scatter(-1, i, v.relu())
    return x, torch.einsum("nls,lsmd->nmd", f, dec)


def test_training_learns_cross_layer_writes_a_per_layer_transcoder_cannot(tmp_path):
    torch.set_num_threads(1)
    x, y = _planted()
    kw = {"steps": 200, "batch_size": 256, "lr": 1e-2, "progress": False, "log_every": 20, "dead_tokens": 2000}
    clt = train_sae(x.flatten(1), 48, "topk", k=2, target=y.flatten(1), cross_layer=2, **kw)
    assert isinstance(clt, CrossLayerTranscoder) and tuple(clt.W_dec.shape) == (2, 48, 2, 8)
    # nothing written backwards: layer 1's writes to MLP 0 stay (structurally) zero
    torch.testing.assert_close(clt.W_dec[1, :, 0].detach(), torch.zeros(48, 8), rtol=0, atol=1e-12)
    assert clt.history.mse.iloc[-1] < 0.3 * clt.history.mse.iloc[0]
    with torch.no_grad():
        pred = clt(x)
    var1 = (y[:, 1] - y[:, 1].mean(0)).pow(2).sum()
    fve_clt = 1 - float((pred[:, 1] - y[:, 1]).pow(2).sum() / var1)
    per_layer = train_sae(x[:, 1], 96, "topk", k=4, target=y[:, 1], **kw)
    with torch.no_grad():
        fve_tc = 1 - float((per_layer(x[:, 1]) - y[:, 1]).pow(2).sum() / var1)
    # layer 1's output is half layer-0 features: out of reach of a transcoder reading layer 1 alone
    assert fve_clt > 0.7 and fve_clt > fve_tc + 0.2, (fve_clt, fve_tc)
    # the other activations train through the same loop (JumpReLU's threshold has a layer axis)
    for arch, extra in (("relu", {"l1_coefficient": 0.01}),
                        ("jumprelu", {"l0_coefficient": 0.01, "jumprelu_init_threshold": 0.1})):
        short = {**kw, "steps": 80, "log_every": 10}
        m = train_sae(x.flatten(1), 16, arch, target=y.flatten(1), cross_layer=2, **short, **extra)
        assert m.history.mse.iloc[-1] < 0.6 * m.history.mse.iloc[0] and m.history.fve.iloc[-1] > 0.2, arch
    # a run interrupted after its step-20 checkpoint and resumed ends as the uninterrupted run (the state holds a CLT)
    from interp.analysis.sae import train as train_mod

    opts = {**kw, "steps": 40, "checkpoint_every": 20, "l0_coefficient": 0.01, "jumprelu_init_threshold": 0.1}
    whole = train_sae(x.flatten(1), 16, "jumprelu", target=y.flatten(1), cross_layer=2, **opts)
    step = train_mod._Trainer.train_step

    def stop_at_30(self, *a, **k):
        if self.step == 30:
            raise KeyboardInterrupt
        return step(self, *a, **k)

    with pytest.MonkeyPatch.context() as mp, pytest.raises(KeyboardInterrupt):
        mp.setattr(train_mod._Trainer, "train_step", stop_at_30)
        train_sae(x.flatten(1), 16, "jumprelu", target=y.flatten(1), cross_layer=2, checkpoint_dir=tmp_path, **opts)
    resumed = train_sae(x.flatten(1), 16, "jumprelu", target=y.flatten(1), cross_layer=2, checkpoint_dir=tmp_path,
                        **opts)
    for name in ("W_enc", "W_dec", "b_enc", "b_dec", "threshold"):
        torch.testing.assert_close(getattr(resumed, name), getattr(whole, name), rtol=1e-5, atol=1e-6)
    assert m.threshold.shape == (2, 16) and float(m.threshold.detach().std()) > 1e-6  # learnt per layer and feature


def test_files_round_trip_and_circuit_tracer_clt_folders(tmp_path):
    model = _relu_model()
    clt = _clt(model, "hook_resid_mid", "jumprelu", seed=1)
    save_sae(clt, tmp_path / "ours")
    cfg = json.loads((tmp_path / "ours" / "cfg.json").read_text())
    assert cfg["architecture"] == "cross_layer_jumprelu_transcoder" and cfg["n_layers"] == 2
    for again in (load_sae(tmp_path / "ours", dtype="float64"), load_transcoders(tmp_path / "ours", dtype="float64")[0]):
        assert isinstance(again, CrossLayerTranscoder)
        for name in ("W_enc", "W_dec", "b_enc", "b_dec", "threshold"):
            torch.testing.assert_close(getattr(again, name), getattr(clt, name))
    # a cfg.json whose sizes do not match the weights is refused before anything that size is built
    cfg["n_layers"] = 10**6
    (tmp_path / "ours" / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(InterpError, match=r"W_enc has shape \(2, 16, 16\); cfg.json needs \(1000000, 16, 16\)"):
        load_sae(tmp_path / "ours")
    # the dashboard's size guard counts what the CLT holds (its decoder has a target-layer axis)
    from interp.report.serving import sae_parameters

    topk = _clt(model, "hook_resid_mid", "topk")
    assert sae_parameters(topk.cfg.to_saelens()) == sum(p.numel() for p in topk.parameters())
    # circuit-tracer's layout from known tensors; the reference is the formula on those tensors in float64
    gen = torch.Generator().manual_seed(4)
    n, d, s = 2, 16, 12
    raw = {i: {"W_enc": torch.randn(s, d, generator=gen), "b_enc": torch.randn(s, generator=gen) * 0.1,
               "b_dec": torch.randn(d, generator=gen), "threshold": torch.rand(s, generator=gen) + 0.05,
               "W_dec": torch.randn(s, n - i, d, generator=gen)} for i in range(n)}
    folder = tmp_path / "ct"
    folder.mkdir()
    for i, t in raw.items():
        save_file({f"{k}_{i}": t[k] for k in ("W_enc", "b_enc", "b_dec", "threshold")},
                  str(folder / f"W_enc_{i}.safetensors"))
        save_file({f"W_dec_{i}": t["W_dec"]}, str(folder / f"W_dec_{i}.safetensors"))
    (folder / "config.yaml").write_text("model_kind: cross_layer_transcoder\nfeature_input_hook: hook_resid_mid\n"
                                        "feature_output_hook: hook_mlp_out\n")
    (loaded,) = load_transcoders(folder, dtype="float64")
    assert loaded.cfg.hook_name == ["blocks.0.hook_resid_mid", "blocks.1.hook_resid_mid"]
    x = torch.randn(5, n, d, generator=gen, dtype=torch.float64)
    feats = []
    for i in range(n):
        pre = x[:, i] @ raw[i]["W_enc"].double().T + raw[i]["b_enc"].double()
        feats.append(pre * (pre > raw[i]["threshold"].double()))
    want = torch.stack([raw[j]["b_dec"].double() + sum(feats[i] @ raw[i]["W_dec"][:, j - i].double()
                                                        for i in range(j + 1)) for j in range(n)], 1)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), want, rtol=1e-9, atol=1e-9)
    # a missing decoder file, and a decoder that writes backwards, are one clear line each
    (folder / "W_dec_1.safetensors").unlink()
    with pytest.raises(InterpError, match=r"W_dec_1\.safetensors"):
        load_transcoders(folder)
    bad = CrossLayerTranscoder(clt.cfg)
    state = {k: v.clone() for k, v in clt.saelens_state_dict().items()}
    state["W_dec"][1, :, 0] = 1.0
    with pytest.raises(InterpError, match="writes from a layer to an earlier one"):
        bad.load_saelens_state_dict(state)


def test_bad_input_is_one_clear_line(tmp_path, capsys):
    model = _relu_model()
    clt = _clt(model, "ln2.hook_normalized", "topk")
    tcs = _exact_transcoders(model)
    with pytest.raises(InterpError, match="give it alone"):
        splice_transcoders(model, [clt, tcs[1]]).__enter__()
    three = CrossLayerTranscoder(CrossLayerTranscoderConfig(
        d_in=16, d_sae=8, n_layers=3, architecture="relu",
        metadata={"hook_name": [f"blocks.{i}.hook_resid_mid" for i in range(3)],
                  "hook_name_out": [f"blocks.{i}.hook_mlp_out" for i in range(3)]}))
    with pytest.raises(InterpError, match="spans 3 layers; the model has 2"):
        attribution_graph(model, three, PROMPT[:, :4])
    with pytest.raises(InterpError, match="cross_layer: a cross-layer transcoder belongs to a transcoder"):
        train_sae(torch.randn(64, 8), 8, cross_layer=2, steps=1, progress=False)
    with pytest.raises(InterpError, match="do not divide by 3"):
        train_sae(torch.randn(64, 8), 8, target=torch.randn(64, 8), cross_layer=3, steps=1, progress=False)
    with pytest.raises(InterpError, match=r"x: expected every layer's input \[\.\.\., n_layers=2, d_in=16\]"):
        clt(torch.randn(3, 16))
    from interp import cli

    assert cli.main(["sae", "train", "--cross-layer", "--out", str(tmp_path / "x")]) == 2
    assert capsys.readouterr().err.strip().endswith(
        "--cross-layer: a cross-layer transcoder is a transcoder; add --transcoder")
    # refused before any model is looked for (this one does not exist)
    assert cli.main(["sae", "train", "--transcoder", "--cross-layer", "--skip", "--model", str(tmp_path / "none"),
                     "--out", str(tmp_path / "y")]) == 2
    assert capsys.readouterr().err.strip().endswith("--cross-layer: spans every layer and has no skip term; drop --skip")


def test_the_shipped_clt_draws_the_shipped_models_graph(tmp_path):
    from interp import cli
    from interp.report.inputs import load_model

    out = tmp_path / "graph.json"
    assert cli.main(["circuit", "And God said, Let there be", "--transcoders", "clt", "--json", str(out),
                     "--quiet"]) == 0
    data = json.loads(out.read_text())
    assert [(t["layer"], t["cross_layer"]) for t in data["transcoders"]] == [(0, True), (1, True)]
    assert 0 < data["scores"]["replacement_score"] <= 1 and 0 < data["scores"]["completeness_score"] <= 1
    # each kept feature's activation is the CLT's joint encoding of the clean run's inputs
    model = load_model()
    (clt,) = load_transcoders(ROOT / "models" / "docs-bible-austen-2l" / "clt")
    _, cache = model.run_with_cache(torch.tensor([data["tokens"]]))
    with torch.no_grad():
        f = clt.encode(_stack(cache, clt.cfg.hook_name))
    feats = [n for n in data["nodes"] if n["kind"] == "feature"]
    assert {n["layer"] for n in feats} == {0, 1}
    for n in feats:
        torch.testing.assert_close(n["activation"], float(f[n["position"], n["layer"], n["feature"]]),
                                   rtol=1e-4, atol=1e-5)


def test_the_clt_card_quotes_its_eval_and_the_per_layer_sets():
    folder = ROOT / "models" / "docs-bible-austen-2l"
    card = (folder / "clt" / "README.md").read_text()
    for name in ("clt", "transcoders"):  # the CLT's numbers and the per-layer set's it is compared with
        ev = json.loads((folder / name / "eval.json").read_text())
        for row in ev["layers"]:
            assert f"{row['fve']:.3f}" in card and f"{row['l0']:.1f}" in card, (name, row["layer"])
        assert f"{ev['metrics']['ce_loss_recovered']:.3f}" in card and f"{ev['metrics']['ce_replaced']:.3f}" in card
