"""Per-layer transcoders saved in circuit-tracer's layout, read as interp :class:`Transcoder` objects.

circuit-tracer (``safety-research/circuit-tracer``) keeps a per-layer transcoder set as one folder:

* ``layer_{i}.safetensors`` for every layer ``i`` (0, 1, …, none missing), holding
  ``W_enc [d_transcoder, d_model]`` (features are rows: ``pre = x @ W_enc.T + b_enc``), ``b_enc [d_transcoder]``,
  ``W_dec [d_transcoder, d_model]``, ``b_dec [d_model]``, and optionally ``W_skip [d_model, d_model]`` (the
  affine skip term ``x @ W_skip.T``), ``activation_function.threshold [d_transcoder]`` (JumpReLU:
  ``pre · 1[pre > θ]``) or ``k`` (a scalar: TopK); with neither, ReLU;
* optionally ``config.yaml`` with ``model_name``, ``feature_input_hook`` and ``feature_output_hook``
  (TransformerLens block-relative names, e.g. ``hook_resid_mid`` / ``hook_mlp_out``; Gemma's ``mlp.hook_in``
  is the normalised MLP input, interp's ``ln2.hook_normalized``), and ``activation`` / ``k`` for TopK sets.

interp's encoder is stored transposed (SAELens' ``W_enc [d_in, d_sae]``) and its JumpReLU threshold as a
logarithm, so thresholds must be positive (a feature with θ ≤ 0 is refused: it would also pass negative
pre-activations). interp's TopK applies a ReLU to the k kept values; circuit-tracer's keeps them as they are,
so the two differ only where a kept pre-activation is negative. Per-layer sets only: a cross-layer transcoder's
folder (``W_enc_{i}`` / ``W_dec_{i}.safetensors``) is read by ``cross_layer.load_circuit_tracer_clt``.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from interp.errors import InterpError

__all__ = ["is_circuit_tracer_folder", "load_circuit_tracer_transcoders"]

_FILE = re.compile(r"layer_(\d+)\.safetensors")
_THRESHOLD = "activation_function.threshold"
_KNOWN = {"W_enc", "W_dec", "b_enc", "b_dec", "W_skip", _THRESHOLD, "k"}
# circuit-tracer's hook names (relative to blocks.{l}.) -> interp's
_HOOKS = {"hook_resid_mid": "hook_resid_mid", "mlp.hook_in": "ln2.hook_normalized",
          "ln2.hook_normalized": "ln2.hook_normalized", "hook_mlp_out": "hook_mlp_out"}


def is_circuit_tracer_folder(folder: str | Path) -> bool:
    """Whether ``folder`` holds ``layer_{i}.safetensors`` files (and no interp/SAELens ``cfg.json``)."""
    folder = Path(folder)
    return folder.is_dir() and not (folder / "cfg.json").is_file() and \
        any(_FILE.fullmatch(p.name) for p in folder.iterdir())


def _config(folder: Path) -> dict:
    path = folder / "config.yaml"
    if not path.is_file():
        return {}
    import yaml  # PyYAML comes with transformers

    try:
        cfg = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise InterpError(f"transcoders: {path} is not readable YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(cfg, dict):
        raise InterpError(f"transcoders: {path} must hold a mapping (model_name, feature_input_hook, ...)")
    return cfg


def _hook(cfg: dict, key: str, default: str, path: Path) -> str:
    name = str(cfg.get(key, default))
    if name not in _HOOKS:
        raise InterpError(f"transcoders: {path} {key}: {name!r} is not a per-layer MLP hook interp maps; expected "
                          f"one of {sorted(_HOOKS)}")
    return _HOOKS[name]


def load_circuit_tracer_transcoders(folder: str | Path, device=None, dtype: str | None = None) -> list:
    """The per-layer transcoders of a circuit-tracer folder (module docstring), one per layer, in order, as
    float32 (or ``dtype``) :class:`~interp.analysis.sae.transcoder.Transcoder` objects."""
    from safetensors import safe_open

    from interp.analysis.sae.transcoder import Transcoder, TranscoderConfig

    folder = Path(folder)
    files = {int(m.group(1)): p for p in folder.iterdir() if (m := _FILE.fullmatch(p.name))} if folder.is_dir() else {}
    if not files:
        raise InterpError(f"transcoders: {folder} holds no circuit-tracer files (layer_0.safetensors, ...)")
    if sorted(files) != list(range(len(files))):
        raise InterpError(f"transcoders: {folder} must hold layer_0 ... layer_{max(files)}.safetensors; "
                          f"layers {sorted(set(range(max(files) + 1)) - set(files))} are missing")
    cfg = _config(folder)
    if cfg.get("model_kind", "transcoder") != "transcoder":
        raise InterpError(f"transcoders: {folder / 'config.yaml'} says model_kind {cfg['model_kind']!r}; only "
                          "per-layer transcoders (model_kind: transcoder) are read from layer_{i}.safetensors files "
                          "(a cross-layer transcoder's folder holds W_enc_{i} / W_dec_{i}.safetensors)")
    hook_in = _hook(cfg, "feature_input_hook", "hook_resid_mid", folder / "config.yaml")
    hook_out = _hook(cfg, "feature_output_hook", "hook_mlp_out", folder / "config.yaml")
    if hook_out != "hook_mlp_out":
        raise InterpError(f"transcoders: {folder / 'config.yaml'} feature_output_hook must be hook_mlp_out")
    out = []
    for layer, path in sorted(files.items()):
        with safe_open(str(path), framework="pt") as f:
            raw = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no __iter__
        unknown = sorted(set(raw) - _KNOWN)
        missing = sorted({"W_enc", "W_dec", "b_enc", "b_dec"} - set(raw))
        if unknown or missing:
            raise InterpError(f"transcoders: {path} is not a circuit-tracer per-layer transcoder (missing "
                              f"{missing}, unexpected {unknown})")
        d_sae, d_model = (int(n) for n in raw["W_enc"].shape) if raw["W_enc"].ndim == 2 else (0, 0)
        k = raw.get("k", cfg.get("k") if cfg.get("activation") == "topk" else None)
        arch = "jumprelu" if _THRESHOLD in raw else "topk" if k is not None else "relu"
        if arch == "jumprelu" and (raw[_THRESHOLD].double() <= 0).any():
            raise InterpError(f"transcoders: {path} has JumpReLU thresholds <= 0 (min "
                              f"{float(raw[_THRESHOLD].min()):.3g}); interp reads positive thresholds only")
        tc_cfg = TranscoderConfig(
            d_in=d_model, d_sae=d_sae, architecture=arch, k=int(k) if arch == "topk" else None, skip="W_skip" in raw,
            dtype=dtype or "float32", metadata={"hook_name": f"blocks.{layer}.{hook_in}",
                                                "hook_name_out": f"blocks.{layer}.hook_mlp_out",
                                                # circuit-tracer names hub models; interp's names differ,
                                                # so the name is kept for reading, not checked (d_model is)
                                                "circuit_tracer_model_name": cfg.get("model_name")})
        state = {"W_enc": raw["W_enc"].T, "W_dec": raw["W_dec"], "b_enc": raw["b_enc"], "b_dec": raw["b_dec"]}
        if "W_skip" in raw:
            state["W_skip"] = raw["W_skip"]
        if arch == "jumprelu":
            state["threshold"] = raw[_THRESHOLD]
        with torch.no_grad():
            tc = Transcoder(tc_cfg).load_saelens_state_dict(state, source=str(path))
        out.append(tc.to(device) if device is not None else tc)
    return out
