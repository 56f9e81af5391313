"""Attribution graphs on transcoders, checked against an independent frozen forward pass (float64).

The reference never uses the graph code: it runs the model with hooks that *replace* every norm scale and
attention pattern by the clean run's cached value and every MLP output by frozen feature activations ×
W_dec + b_dec + skip(x) + the frozen error — the local replacement model written out as a forward pass. An
edge's weight must equal the change in its target when the source alone is removed there, and the bias the
graph reports must equal the target's value when every node is removed.
"""

from __future__ import annotations

import pytest
import torch
from conftest import build_hf_from_config

import interp
from interp.analysis.circuits.graph import attribution_graph, graph_scores, intervene, load_graph, prune_graph
from interp.analysis.sae.transcoder import Transcoder, TranscoderConfig
from interp.errors import InterpError

VOCAB = 64
SMALL = {"vocab_size": VOCAB, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
         "max_position_embeddings": 32, "bos_token_id": 1, "eos_token_id": 2}
LLAMA = {**SMALL, "intermediate_size": 48, "num_key_value_heads": 2}
CASES = {  # case -> (config class, kwargs, transcoder input hook, architecture, skip)
    "gpt2": ("GPT2Config", {"vocab_size": VOCAB, "n_embd": 32, "n_layer": 2, "n_head": 4, "n_positions": 32},
             "ln2.hook_normalized", "relu", True),
    "llama": ("LlamaConfig", LLAMA, "hook_resid_mid", "topk", False),
    "gemma2": ("Gemma2Config", {**LLAMA, "head_dim": 16, "sliding_window": 4, "query_pre_attn_scalar": 24,
                                "attn_logit_softcapping": 5.0, "final_logit_softcapping": 3.0},
               "ln2.hook_normalized", "jumprelu", True),
}
_MODELS: dict = {}
PROMPT = torch.tensor([[1, 7, 19, 33, 8, 41, 12]])


def _model(case: str):
    if case not in _MODELS:
        import transformers

        cls, kwargs, *_ = CASES[case]
        hf = build_hf_from_config(getattr(transformers, cls)(**kwargs), seed=5).double()
        _MODELS[case] = interp.load(hf)
    return _MODELS[case]


def _transcoders(model, hook: str, arch: str, skip: bool, seed: int = 0, d_sae: int = 24):
    gen = torch.Generator().manual_seed(seed)
    d = model.cfg.d_model
    out = []
    for layer in range(model.cfg.n_layers):
        cfg = TranscoderConfig(d_in=d, d_sae=d_sae, architecture=arch, k=6 if arch == "topk" else None, skip=skip,
                               dtype="float64", metadata={"hook_name": f"blocks.{layer}.{hook}",
                                                          "hook_name_out": f"blocks.{layer}.hook_mlp_out",
                                                          "model_name": model.cfg.name})
        tc = Transcoder(cfg)
        with torch.no_grad():
            for p in tc.parameters():  # every parameter non-trivial, biases included
                p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * 0.3)
            tc.W_enc.mul_(2.0)
            if arch == "jumprelu":
                tc.log_threshold.fill_(-2.0)
        out.append(tc)
    return out


class _Frozen:
    """The replacement model as a forward pass over the clean run's cached scales, patterns, acts and errors."""

    def __init__(self, model, tcs, toks):
        self.model, self.tcs, self.toks = model, tcs, toks
        _, cache = model.run_with_cache(toks, attn_backend="eager")  # patterns materialised, not rebuilt
        self.frozen = {n: cache[n] for n in cache if n.endswith((".hook_scale", "attn.hook_pattern"))}
        self.acts = [tc.encode(cache[tc.cfg.hook_name][0]) for tc in tcs]
        self.errors = [cache[tc.cfg.hook_name_out][0] - tc.predict(cache[tc.cfg.hook_name][0]) for tc in tcs]

    @torch.no_grad()
    def run(self, drop=None):
        """Targets' values with one node removed (``drop``: ("feature", layer, pos, f) | ("error", layer, pos) |
        ("token", pos) | ("all",)): feature pre-activations per layer, and centred pre-soft-cap logits."""
        model, drop = self.model, drop or ()
        inputs, unembed = {}, {}
        acts = [a.clone() for a in self.acts]
        errors = [e.clone() for e in self.errors]
        if drop and drop[0] == "feature":
            acts[drop[1]][drop[2], drop[3]] = 0.0
        if drop and drop[0] == "error":
            errors[drop[1]][drop[2]] = 0.0
        if drop and drop[0] == "all":
            acts = [torch.zeros_like(a) for a in acts]
            errors = [torch.zeros_like(e) for e in errors]

        def replace(value):
            return lambda act, hook=None: value

        def embed(act, hook=None):
            act = act.clone()
            if drop and drop[0] == "token":
                act[:, drop[1]] = 0.0
            if drop and drop[0] == "all":
                act[:] = 0.0
            return act

        def read(layer):
            def hook(act, hook=None):
                inputs[layer] = act
            return hook

        def write(layer, tc):
            def hook(act, hook=None):
                return (acts[layer] @ tc.W_dec + tc.b_dec + tc.skip(inputs[layer][0]) + errors[layer])[None]
            return hook

        def grab(act, hook=None):
            unembed["u"] = act

        fwd = [(n, replace(v)) for n, v in self.frozen.items()]
        fwd += [(n, embed) for n in ("hook_embed", "hook_pos_embed") if n in model.hook_dict]
        for layer, tc in enumerate(self.tcs):
            fwd += [(tc.cfg.hook_name, read(layer)), (tc.cfg.hook_name_out, write(layer, tc))]
        fwd.append(("hook_unembed", grab))
        model.run_with_hooks(self.toks, fwd_hooks=fwd)
        u = unembed["u"][0, -1] * model.cfg.logit_scale
        pre = [tc.pre_activations(inputs[layer][0]) for layer, tc in enumerate(self.tcs)]
        return pre, u - u.mean()


def _target_value(values, node):
    pre, logits = values
    if node.kind == "logit":
        return float(logits[int(node.token_id)])
    return float(pre[int(node.layer)][int(node.position), int(node.feature)])


def _drop(node):
    if node.kind == "feature":
        return ("feature", int(node.layer), int(node.position), int(node.feature))
    if node.kind == "error":
        return ("error", int(node.layer), int(node.position))
    return ("token", int(node.position))


@pytest.mark.parametrize("case", list(CASES))
def test_edges_are_the_frozen_models_direct_effects_and_the_logit_is_complete(case):
    model = _model(case)
    _, _, hook, arch, skip = CASES[case]
    tcs = _transcoders(model, hook, arch, skip)
    g = attribution_graph(model, tcs, PROMPT, prune=False, batch_size=16, max_logits=3)
    ref = _Frozen(model, tcs, PROMPT)
    clean = ref.run()
    nodes = g.nodes
    # the graph's target values are the real model's (features: pre-activations; logits: centred, pre-soft-cap)
    for node in nodes[nodes.kind.isin(["feature", "logit"])].itertuples():
        torch.testing.assert_close(node.value, _target_value(clean, node), rtol=1e-9, atol=1e-9)
    # completeness: value = Σ incoming direct effects + bias, with bias = the value with every node removed
    empty = ref.run(("all",))
    for node in nodes[nodes.kind.isin(["feature", "logit"])].itertuples():
        torch.testing.assert_close(node.bias, _target_value(empty, node), rtol=1e-7, atol=1e-9)
        row_sum = float(g.adjacency[node.id].sum())
        torch.testing.assert_close(row_sum + node.bias, node.value, rtol=1e-9, atol=1e-9)
    # sampled edges (every source kind into features of layer 1 and into logits): ablation = edge weight
    edges = g.edges()
    edges = edges[edges.weight.abs() > 1e-6]
    kinds = nodes.kind.to_numpy()
    picked = []
    for src_kind in ("feature", "error", "token"):
        for tgt_kind in ("feature", "logit"):
            sel = edges[(kinds[edges.source] == src_kind) & (kinds[edges.target] == tgt_kind)]
            picked += list(sel.head(3).itertuples())
    assert len(picked) >= 12, f"{case}: too few edges to sample ({len(picked)})"
    for e in picked:
        src, tgt = nodes.iloc[e.source], nodes.iloc[e.target]
        effect = _target_value(clean, tgt) - _target_value(ref.run(_drop(src)), tgt)
        torch.testing.assert_close(effect, e.weight, rtol=1e-4, atol=1e-10)
    # the logits' top-k follow the real (soft-capped) distribution
    probs = torch.softmax(model(PROMPT)[0, -1].double(), -1)
    logit_nodes = nodes[nodes.kind == "logit"]
    assert list(logit_nodes.token_id) == probs.topk(len(logit_nodes)).indices.tolist()
    scores = graph_scores(g)
    assert 0 < scores["replacement_score"] <= 1 and 0 < scores["completeness_score"] <= 1


def test_pruning_keeps_the_influential_nodes_and_the_scores_reach_one_without_errors():
    model = _model("gpt2")
    tcs = _transcoders(model, "ln2.hook_normalized", "relu", True)
    g = attribution_graph(model, tcs, PROMPT, prune=False, max_logits=3)
    p = prune_graph(g, node_threshold=0.5, edge_threshold=0.9)
    assert len(p.nodes) < len(g.nodes)
    kinds = p.nodes.kind
    assert (kinds == "token").sum() == PROMPT.shape[1] and (kinds == "logit").sum() == 3
    # a kept feature's influence is at least every dropped feature's
    kept = set(zip(p.nodes.layer, p.nodes.position, p.nodes.feature))
    full = g.nodes[g.nodes.kind == "feature"]
    dropped = full[[(r.layer, r.position, r.feature) not in kept for r in full.itertuples()]]
    if len(dropped) and (p.nodes.kind == "feature").any():
        assert p.nodes[p.nodes.kind == "feature"].influence.min() >= dropped.influence.max() - 1e-12
    # a graph whose errors send nothing scores 1 on both
    no_err = prune_graph(g, 1.0, 1.0)
    no_err.adjacency[:, torch.as_tensor((no_err.nodes.kind == "error").to_numpy())] = 0.0
    s = graph_scores(no_err)
    torch.testing.assert_close(s["replacement_score"], 1.0)
    torch.testing.assert_close(s["completeness_score"], 1.0)


def test_json_round_trip(tmp_path):
    model = _model("llama")
    tcs = _transcoders(model, "hook_resid_mid", "topk", False)
    g = attribution_graph(model, tcs, PROMPT, max_logits=2)
    path = g.save(tmp_path / "graph.json")
    again = load_graph(path)
    torch.testing.assert_close(again.adjacency, g.adjacency.double())
    assert again.nodes.drop(columns="top_logits").equals(g.nodes.drop(columns="top_logits"))
    assert again.info["scores"] == g.info["scores"] and again.info["tokens"] == PROMPT[0].tolist()
    with pytest.raises(InterpError, match="already exists"):
        g.save(path)
    (tmp_path / "bad.json").write_text('{"format": "other"}')
    with pytest.raises(InterpError, match="not an attribution graph"):
        load_graph(tmp_path / "bad.json")


def test_intervention_matches_a_hand_edit_of_the_spliced_model():
    model = _model("gpt2")
    tcs = _transcoders(model, "ln2.hook_normalized", "relu", True)
    acts = tcs[0].encode(model.run_with_cache(PROMPT)[1]["blocks.0.ln2.hook_normalized"][0])
    pos, feat = 3, int(acts[3].argmax())
    same = intervene(model, tcs, PROMPT, {(0, pos, feat): float(acts[pos, feat])})
    torch.testing.assert_close(same.logits_after, same.logits_before)  # set to its own value: nothing changes
    off = intervene(model, tcs, PROMPT, {(0, pos, feat): 0.0, (1, 2, 0): 2.0}, mode="scale")
    # reference: layer 0's MLP output minus the feature's decoder contribution at that position (layer 1's
    # MLP is its real output + the change of its transcoder's prediction when feature 0 at position 2 doubles)
    def edit0(act, hook=None):
        act = act.clone()
        act[0, pos] -= acts[pos, feat] * tcs[0].W_dec[feat]
        return act

    x1 = {}

    def read1(act, hook=None):
        x1["x"] = act

    def edit1(act, hook=None):
        a = tcs[1].encode(x1["x"][0])
        act = act.clone()
        act[0, 2] += a[2, 0] * tcs[1].W_dec[0]
        return act

    ref = model.run_with_hooks(PROMPT, fwd_hooks=[("blocks.0.hook_mlp_out", edit0), ("blocks.1.ln2.hook_normalized",
                                                                                       read1),
                                                  ("blocks.1.hook_mlp_out", edit1)])[0, -1]
    torch.testing.assert_close(off.logits_after, ref.double(), rtol=1e-9, atol=1e-9)
    assert not torch.allclose(off.logits_after, off.logits_before)


def test_bad_input_is_one_clear_line():
    model = _model("gpt2")
    tcs = _transcoders(model, "ln2.hook_normalized", "relu", False)
    for empty in ("", torch.zeros(1, 0, dtype=torch.long)):
        with pytest.raises(InterpError, match="prompt: expected a non-empty"):
            attribution_graph(model, tcs, empty)
    with pytest.raises(InterpError, match="every layer; layers \\[1\\]"):
        attribution_graph(model, tcs[:1], PROMPT)
    wide = TranscoderConfig(d_in=48, d_sae=8, architecture="relu", metadata={
        "hook_name": "blocks.0.ln2.hook_normalized", "hook_name_out": "blocks.0.hook_mlp_out"})
    with pytest.raises(InterpError, match="d_model is 32: it belongs to another model"):
        attribution_graph(model, [Transcoder(wide), tcs[1]], PROMPT)
    other = _transcoders(model, "ln2.hook_normalized", "relu", False)
    other[0].cfg.metadata["model_name"] = "someone-else"
    with pytest.raises(InterpError, match="trained on model 'someone-else'"):
        attribution_graph(model, other, PROMPT)
    nohook = _transcoders(model, "hook_resid_mid", "relu", False)
    nohook[0].cfg.metadata["hook_name"] = "blocks.0.ln9.hook_normalized"
    with pytest.raises(InterpError, match="has no hook 'blocks.0.ln9.hook_normalized'"):
        attribution_graph(model, nohook, PROMPT)
    with pytest.raises(InterpError, match="node_threshold: must be a fraction"):
        prune_graph(attribution_graph(model, tcs, PROMPT, prune=False), node_threshold=0)
