"""Transcoders in circuit-tracer's on-disk layout (``layer_{i}.safetensors`` + ``config.yaml``), written here by
hand from random tensors, read by ``load_transcoders`` and checked against a float64 reference computed from the
raw tensors with circuit-tracer's conventions (features as rows of ``W_enc``; JumpReLU ``z·1[z > θ]``; skip
``x @ W_skip.T``); then an attribution graph runs on them."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from interp.analysis.sae.transcoder import load_transcoders
from interp.errors import InterpError

D, F = 32, 40


def _tensors(gen, *, threshold=False, skip=False, k=None):
    t = {"W_enc": torch.randn(F, D, generator=gen) * 0.5, "b_enc": torch.randn(F, generator=gen) * 0.3,
         "W_dec": torch.randn(F, D, generator=gen) * 0.2, "b_dec": torch.randn(D, generator=gen) * 0.1}
    if threshold:
        t["activation_function.threshold"] = torch.rand(F, generator=gen) * 0.8 + 0.05
    if skip:
        t["W_skip"] = torch.randn(D, D, generator=gen) * 0.05
    if k is not None:
        t["k"] = torch.tensor(k)
    return t


def _reference(t, x):
    """circuit-tracer's per-layer transcoder, in float64, from the raw tensors."""
    t = {n: v.double() for n, v in t.items()}
    pre = x @ t["W_enc"].T + t["b_enc"]
    if "activation_function.threshold" in t:
        acts = pre * (pre > t["activation_function.threshold"])
    elif "k" in t:
        idx = pre.topk(int(t["k"]), dim=-1).indices
        acts = torch.zeros_like(pre).scatter(-1, idx, pre.gather(-1, idx))
    else:
        acts = pre.relu()
    out = acts @ t["W_dec"] + t["b_dec"]
    return acts, out + (x @ t["W_skip"].T if "W_skip" in t else 0)


@pytest.mark.parametrize("kind", ["jumprelu_skip", "relu", "topk"])
def test_read_matches_a_float64_reference(tmp_path, kind):
    gen = torch.Generator().manual_seed(7)
    opts = {"jumprelu_skip": {"threshold": True, "skip": True}, "relu": {}, "topk": {"k": 5}}[kind]
    raw = [_tensors(gen, **opts) for _ in range(2)]
    if kind == "topk":  # circuit-tracer keeps the k largest as they are, interp ReLUs them: the same when positive
        for t in raw:
            t["b_enc"] += 5.0
    for i, t in enumerate(raw):
        save_file(t, str(tmp_path / f"layer_{i}.safetensors"))
    (tmp_path / "config.yaml").write_text("model_name: some/model\nmodel_kind: transcoder\n"
                                          "feature_input_hook: mlp.hook_in\nfeature_output_hook: hook_mlp_out\n")
    tcs = load_transcoders(tmp_path, dtype="float64")
    assert [tc.cfg.hook_name for tc in tcs] == ["blocks.0.ln2.hook_normalized", "blocks.1.ln2.hook_normalized"]
    assert [tc.cfg.hook_name_out for tc in tcs] == ["blocks.0.hook_mlp_out", "blocks.1.hook_mlp_out"]
    x = torch.randn(9, D, generator=gen, dtype=torch.float64) * 2
    for tc, t in zip(tcs, raw):
        acts, out = _reference(t, x)
        with torch.no_grad():
            torch.testing.assert_close(tc.encode(x), acts, rtol=1e-10, atol=1e-12)
            torch.testing.assert_close(tc.predict(x), out, rtol=1e-10, atol=1e-12)
        assert acts.count_nonzero() > 0 and (acts == 0).any()  # the nonlinearity is exercised


def test_a_graph_runs_on_them_and_bad_folders_are_one_line(tmp_path):
    from interp.analysis.circuits.graph import attribution_graph
    from interp.model.config import DecoderConfig
    from interp.model.transformer import HookedDecoder

    torch.manual_seed(0)
    model = HookedDecoder(DecoderConfig(d_vocab=64, n_ctx=16, d_model=D, n_layers=2, n_heads=2))
    gen = torch.Generator().manual_seed(1)
    for i in range(2):
        save_file(_tensors(gen, threshold=True), str(tmp_path / f"layer_{i}.safetensors"))
    graph = attribution_graph(model, load_transcoders(tmp_path), torch.tensor([[3, 9, 4, 17]]), prune=False)
    assert (graph.nodes.kind == "feature").any()  # no config.yaml: hook_resid_mid -> hook_mlp_out, as circuit-tracer
    assert graph.info["transcoders"][0]["hook_name"] == "blocks.0.hook_resid_mid"

    bad = tmp_path / "bad"
    bad.mkdir()
    save_file(_tensors(gen), str(bad / "layer_1.safetensors"))
    with pytest.raises(InterpError, match=r"layers \[0\] are missing"):
        load_transcoders(bad)
    save_file({**_tensors(gen), "activation_function.threshold": -torch.ones(F)}, str(bad / "layer_0.safetensors"))
    with pytest.raises(InterpError, match="thresholds <= 0"):
        load_transcoders(bad)
    save_file({"W_enc_0": torch.zeros(F, D)}, str(bad / "layer_0.safetensors"))
    with pytest.raises(InterpError, match="not a circuit-tracer per-layer transcoder"):
        load_transcoders(bad)
    (bad / "config.yaml").write_text("model_kind: cross_layer_transcoder\n")
    with pytest.raises(InterpError, match="only per-layer transcoders"):
        load_transcoders(bad)
