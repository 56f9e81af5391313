"""SAELens interop: every architecture and inference option SAELens saves loads here and computes what SAELens does.

Fixtures are written in SAELens' on-disk format (``cfg.json`` in SAELens 6's layout + ``sae_weights.safetensors``
with its tensor names) by hand, so the tests run without sae-lens; each loaded SAE's encode/decode is checked
against a float64 implementation of SAELens' equations written here (``reference``). Where sae-lens is installed
(it needs TransformerLens < 4) the same fixtures are also built and saved by SAELens itself and interp must equal
SAELens' own encode/decode bit for bit. Then: SAELens-style SAE objects in ``splice_sae``, and ``run_with_saes`` /
``run_with_cache_with_saes`` against hooks written by hand.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import save_file

from interp.analysis.sae import SAE, SAEConfig, load_sae, run_with_cache_with_saes, run_with_saes, splice_sae
from interp.errors import InterpError
from interp.model.config import DecoderConfig
from interp.model.transformer import HookedDecoder

D_IN, D_SAE, N_HEADS = 12, 20, 3
RESID = "blocks.0.hook_resid_post"
Z = "blocks.1.attn.hook_z"
# (name, architecture, extra cfg.json keys): every architecture and inference option SAELens 6 saves
CASES = [
    ("standard", "standard", {}),
    ("topk_saelens_defaults", "topk", {"k": 4, "rescale_acts_by_decoder_norm": True}),
    ("topk_folded", "topk", {"k": 4, "rescale_acts_by_decoder_norm": False}),
    ("jumprelu", "jumprelu", {}),
    ("gated", "gated", {}),
    ("abstopk", "abstopk", {"k": 4, "rescale_acts_by_decoder_norm": True}),
    ("constant_norm_rescale", "standard", {"normalize_activations": "constant_norm_rescale"}),
    ("layer_norm", "jumprelu", {"normalize_activations": "layer_norm"}),
    ("expected_average_only_in", "topk", {"k": 3, "normalize_activations": "expected_average_only_in"}),
    ("no_b_dec_in", "standard", {"apply_b_dec_to_input": False}),
    ("hook_z", "topk", {"k": 5, "reshape_activations": "hook_z", "hook_name": Z}),
]
WEIGHTS = {"standard": ("W_enc", "W_dec", "b_enc", "b_dec"), "topk": ("W_enc", "W_dec", "b_enc", "b_dec"),
           "abstopk": ("W_enc", "W_dec", "b_enc", "b_dec"),
           "jumprelu": ("W_enc", "W_dec", "b_enc", "b_dec", "threshold"),
           "gated": ("W_enc", "W_dec", "b_dec", "b_gate", "r_mag", "b_mag")}


def saelens_cfg(arch: str, extra: dict) -> dict:
    """cfg.json as SAELens 6 writes it (SAEConfig.to_dict(): fields, metadata dict, architecture)."""
    extra = dict(extra)
    meta = {"hook_name": extra.pop("hook_name", RESID), "model_name": "tiny", "sae_lens_version": "6.54.12"}
    cfg = {"d_in": D_IN, "d_sae": D_SAE, "dtype": "float32", "device": "cpu", "apply_b_dec_to_input": True,
           "normalize_activations": "none", "reshape_activations": "none", "metadata": meta, "architecture": arch}
    return {**cfg, **extra}


def random_weights(arch: str, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    shapes = {"W_enc": (D_IN, D_SAE), "W_dec": (D_SAE, D_IN), "b_dec": (D_IN,)}
    out = {name: torch.randn(shapes.get(name, (D_SAE,)), generator=g) * 0.5 for name in WEIGHTS[arch]}
    if "threshold" in out:
        out["threshold"] = out["threshold"].abs() * 0.3
    return out


def write_fixture(folder, arch: str, extra: dict, seed: int = 0):
    folder.mkdir(parents=True, exist_ok=True)
    weights = random_weights(arch, seed)
    save_file(weights, str(folder / "sae_weights.safetensors"))
    (folder / "cfg.json").write_text(json.dumps(saelens_cfg(arch, extra)))
    return weights


def reference(cfg: dict, w: dict, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """SAELens' encode and decode in float64, written from its equations: (features, reconstruction)."""
    w = {k: v.double() for k, v in w.items()}
    shape = x.shape
    x = x.double()
    if cfg["reshape_activations"] == "hook_z":
        x = x.reshape(*shape[:-2], -1)
    norm = cfg["normalize_activations"]
    if norm == "constant_norm_rescale":
        coeff = D_IN ** 0.5 / x.norm(dim=-1, keepdim=True)
        x = x * coeff
    elif norm == "layer_norm":
        mu = x.mean(-1, keepdim=True)
        std = (x - mu).std(-1, keepdim=True)
        x = (x - mu) / (std + 1e-5)
    if cfg["apply_b_dec_to_input"]:
        x = x - w["b_dec"]
    arch = cfg["architecture"]
    if arch == "gated":
        gate = (x @ w["W_enc"] + w["b_gate"] > 0).double()
        f = gate * torch.relu(x @ (w["W_enc"] * w["r_mag"].exp()) + w["b_mag"])
    else:
        pre = x @ w["W_enc"] + w["b_enc"]
        if arch == "jumprelu":
            f = torch.relu(pre) * (pre > w["threshold"])
        elif arch in ("topk", "abstopk"):
            norms = w["W_dec"].norm(dim=-1)
            ranked = pre * norms if cfg.get("rescale_acts_by_decoder_norm") else pre
            by = ranked if arch == "topk" else ranked.abs()  # AbsTopK: by magnitude, sign kept, no ReLU
            keep = torch.zeros_like(ranked).scatter(-1, by.topk(cfg["k"], dim=-1).indices, 1.0)
            f = (torch.relu(ranked) if arch == "topk" else ranked) * keep
        else:
            f = torch.relu(pre)
    dec_in = f / w["W_dec"].norm(dim=-1) if cfg.get("rescale_acts_by_decoder_norm") else f
    out = dec_in @ w["W_dec"] + w["b_dec"]
    if norm == "constant_norm_rescale":
        out = out / coeff
    elif norm == "layer_norm":
        out = out * std + mu
    return f, out.reshape(shape)


def activations(cfg: dict, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if cfg["reshape_activations"] == "hook_z":
        return torch.randn(2, 5, N_HEADS, D_IN // N_HEADS, generator=g)
    return torch.randn(2, 5, D_IN, generator=g) + 0.3


@pytest.mark.parametrize(("name", "arch", "extra"), CASES, ids=[c[0] for c in CASES])
def test_saelens_folder_loads_and_matches_the_float64_reference(tmp_path, name, arch, extra):
    weights = write_fixture(tmp_path / name, arch, extra)
    cfg = saelens_cfg(arch, extra)
    sae = load_sae(tmp_path / name, dtype="float64")  # float64: the comparison is against the equations alone
    x = activations(cfg)
    with torch.no_grad():
        f = sae.encode(x)
        recon = sae.decode(f)
        ref_f, ref_recon = reference(cfg, weights, x)
        torch.testing.assert_close(f, ref_f, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(recon, ref_recon, rtol=1e-12, atol=1e-12)
        assert recon.shape == x.shape
        torch.testing.assert_close(sae(x), ref_recon, rtol=1e-12, atol=1e-12)
    # and back out in SAELens' format: the same cfg options and tensors
    again = tmp_path / f"{name}_again"
    from interp.analysis.sae import save_sae

    save_sae(sae, again)
    written = json.loads((again / "cfg.json").read_text())
    for key in ("normalize_activations", "reshape_activations", "apply_b_dec_to_input", "architecture"):
        assert written[key] == cfg[key], key
    assert written.get("rescale_acts_by_decoder_norm", False) == cfg.get("rescale_acts_by_decoder_norm", False)
    assert sorted(sae.saelens_state_dict()) == sorted(WEIGHTS[arch])


def test_unsupported_saelens_options_are_named(tmp_path):
    write_fixture(tmp_path / "w", "standard", {"normalize_activations": "covariance_whitening"})
    with pytest.raises(InterpError, match="covariance_whitening.*fold_activation_whitening"):
        load_sae(tmp_path / "w")
    write_fixture(tmp_path / "r", "standard", {"reshape_activations": "hook_q"})
    with pytest.raises(InterpError, match="reshape_activations='hook_q'"):
        load_sae(tmp_path / "r")
    with pytest.raises(InterpError, match="decode: normalize_activations"):
        write_fixture(tmp_path / "c", "standard", {"normalize_activations": "constant_norm_rescale"})
        load_sae(tmp_path / "c").decode(torch.zeros(1, D_SAE))
    from interp.analysis.sae import train_sae

    with pytest.raises(InterpError, match="architecture: train one of"):
        train_sae(torch.randn(64, D_IN), D_SAE, "gated", steps=1, progress=False)


# --- SAELens itself, where it installs (TransformerLens 3.x) --------------------------------------------------------
@pytest.mark.parametrize(("name", "arch", "extra"), CASES, ids=[c[0] for c in CASES])
def test_saved_by_saelens_equals_saelens_bit_for_bit(tmp_path, name, arch, extra):
    sae_lens = pytest.importorskip("sae_lens")
    cfg = saelens_cfg(arch, extra)
    theirs = sae_lens.SAE.from_dict(cfg)
    theirs.load_state_dict(random_weights(arch, seed=3))
    theirs.save_model(tmp_path / name)
    ours = load_sae(tmp_path / name)
    x = activations(cfg, seed=4)
    with torch.no_grad():
        f, ref_f = ours.encode(x), theirs.encode(x)
        assert torch.equal(f, ref_f)
        assert torch.equal(ours.decode(f), theirs.decode(ref_f))
    again = sae_lens.SAE.load_from_disk(ours.cfg and _saved(ours, tmp_path / f"{name}_ours"))
    with torch.no_grad():
        assert torch.equal(again.encode(x), ref_f)


def _saved(sae, folder):
    from interp.analysis.sae import save_sae

    return str(save_sae(sae, folder))


# --- splicing SAELens SAE objects; run_with_saes ----------------------------------------------------------------------
class ForeignSAE(torch.nn.Module):
    """What splice_sae may rely on in a SAELens ``SAE``: W_enc/W_dec/b_enc/b_dec, cfg.metadata.hook_name (an object,
    not a dict), d_in, encode/decode/forward and a use_error_term attribute. A plain ReLU SAE."""

    def __init__(self, weights: dict, hook_name: str):
        super().__init__()
        for name, value in weights.items():
            setattr(self, name, torch.nn.Parameter(value.clone()))
        self.cfg = SimpleNamespace(d_in=D_IN, d_sae=D_SAE, metadata=SimpleNamespace(hook_name=hook_name))
        self.use_error_term = False

    def encode(self, x):
        return torch.relu((x - self.b_dec) @ self.W_enc + self.b_enc)

    def decode(self, f):
        return f @ self.W_dec + self.b_dec

    def forward(self, x):
        out = self.decode(self.encode(x))
        return out + (x - out).detach() if self.use_error_term else out


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return HookedDecoder(DecoderConfig(d_vocab=40, n_ctx=16, d_model=D_IN, n_layers=2, n_heads=N_HEADS)).eval()


@torch.no_grad()
def test_splice_and_run_with_saes_take_saelens_objects(tiny):
    tokens = torch.tensor([[1, 5, 7, 2, 9, 3]])
    weights = random_weights("standard", seed=5)
    foreign = ForeignSAE(weights, RESID)
    ours = SAE(SAEConfig(d_in=D_IN, d_sae=D_SAE, architecture="relu", metadata={"hook_name": RESID}))
    ours.load_saelens_state_dict(weights)

    def by_hand(act, hook):  # the reconstruction in place of the activation, written out
        return torch.relu((act - weights["b_dec"]) @ weights["W_enc"] + weights["b_enc"]) @ weights["W_dec"] + \
            weights["b_dec"]

    expected = tiny.run_with_hooks(tokens, fwd_hooks=[(RESID, by_hand)])
    for sae in (foreign, ours):
        with splice_sae(tiny, sae):
            torch.testing.assert_close(tiny(tokens), expected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(run_with_saes(tiny, tokens, saes=[sae]), expected, rtol=1e-5, atol=1e-5)
        # with the error term the model's output is unchanged
        torch.testing.assert_close(run_with_saes(tiny, tokens, saes=[sae], use_error_term=True), tiny(tokens),
                                   rtol=1e-5, atol=1e-5)
    assert foreign.use_error_term is False  # restored
    with pytest.raises(InterpError, match="sae: expected an SAE"):
        run_with_saes(tiny, tokens, saes=[torch.nn.Linear(2, 2)])


@torch.no_grad()
def test_run_with_cache_with_saes_caches_the_sae_hooks(tiny, tmp_path):
    tokens = torch.tensor([[1, 5, 7, 2, 9, 3]])
    write_fixture(tmp_path / "z", "topk", {"k": 5, "reshape_activations": "hook_z", "hook_name": Z})
    z_sae = load_sae(tmp_path / "z")
    resid_sae = SAE(SAEConfig(d_in=D_IN, d_sae=D_SAE, architecture="relu", metadata={"hook_name": RESID}))
    logits, cache = run_with_cache_with_saes(tiny, tokens, saes=[resid_sae, z_sae])
    torch.testing.assert_close(logits, run_with_saes(tiny, tokens, saes=[resid_sae, z_sae]), rtol=1e-5, atol=1e-6)
    # SAELens' names: the SAE's hooks under the hook it is mounted at
    torch.testing.assert_close(cache[f"{RESID}.hook_sae_acts_post"], resid_sae.encode(cache[f"{RESID}.hook_sae_input"]))
    z_in = cache[f"{Z}.hook_sae_input"]
    assert z_in.shape == (1, 6, D_IN)  # hook_z activations [.., n_heads, d_head] flattened inside
    torch.testing.assert_close(cache[f"{Z}.hook_sae_recons"], z_sae.decode(z_sae.encode(z_in)))
    torch.testing.assert_close(cache[Z], cache[f"{Z}.hook_sae_recons"].reshape(cache[Z].shape))
    only = run_with_cache_with_saes(tiny, tokens, saes=[resid_sae], names_filter=lambda n: n.endswith("acts_post"))[1]
    assert list(only.keys()) == [f"{RESID}.hook_sae_acts_post"]
