"""Models larger than one device: place blocks across GPUs, CPU and disk with `accelerate`.

``dispatch(model, device_map, max_memory=..., offload_folder=...)`` is what ``interp.load(...,
device_map=...)`` calls. ``device_map="auto"`` (or ``"balanced"``, ``"balanced_low_0"``,
``"sequential"``) asks `accelerate`'s ``infer_auto_device_map`` to fill the devices in ``max_memory``
(e.g. ``{0: "20GiB", 1: "20GiB", "cpu": "60GiB"}``) in order, never splitting a block; a dict maps module
names (``embed``, ``pos_embed``, ``blocks.3``, ``ln_final``, ``unembed``) to a GPU index, ``"cuda:1"``,
``"cpu"`` or ``"disk"``. ``dispatch_model`` then attaches hooks that move each block's inputs to its
device and, for ``"cpu"`` / ``"disk"`` entries when a GPU runs the model, stream the weights in for the
forward pass (disk weights are memory-mapped from ``offload_folder``).

Every TransformerLens hook keeps working: hook points are submodules of the blocks, so a hook sees (and
may edit) the activation on the block's device. ``run_with_cache(..., device="cpu")`` gathers the cache on
the CPU as it is recorded, which also gives TransformerLens' cache methods tensors on one device; the lazy
attention patterns are rebuilt from q/k stored the same way. Analyzers that read weights directly
(``model.W_U``, ``W_out`` ...) need those weights in memory: keep them off ``"disk"``.
"""

from __future__ import annotations

import torch

from interp.errors import InterpError

__all__ = ["AUTO_MAPS", "dispatch"]

AUTO_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")
NO_SPLIT = ["Block"]  # a block's attention and MLP always sit together


def _device(value) -> str | int:
    """Normalise one device-map value; raise for anything accelerate would not take."""
    if isinstance(value, torch.device):
        value = str(value)
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str) and (value in ("cpu", "disk", "mps", "cuda") or value.startswith(("cuda:", "xpu:"))):
        return "cuda:0" if value == "cuda" else value
    raise InterpError(f"device_map: a value must be a GPU index, 'cuda:N', 'cpu' or 'disk'; given {value!r}")


def _execution_device(device_map: dict) -> torch.device:
    """The device that runs offloaded ("cpu" / "disk") modules: the first accelerator in the map, else the CPU."""
    for v in device_map.values():
        if v not in ("cpu", "disk"):
            return torch.device(f"cuda:{v}" if isinstance(v, int) else v)
    return torch.device("cpu")


def _module_device(device_map: dict, name: str):
    """The map entry covering module ``name`` (its own key or the longest prefix key)."""
    best = None
    for key, v in device_map.items():
        covers = key == "" or name == key or name.startswith(key + ".")
        if covers and (best is None or len(key) > len(best[0])):
            best = (key, v)
    return None if best is None else best[1]


def dispatch(model, device_map="auto", *, max_memory: dict | None = None, offload_folder=None):
    """Place ``model`` (a ``HookedDecoder`` on the CPU or meta-free) across devices; returns it.

    See the module docstring. The placement is recorded as ``model.hf_device_map``, and
    ``model.input_device`` is where token ids go (the embedding's execution device).
    """
    from accelerate import dispatch_model, infer_auto_device_map
    from accelerate.utils import get_balanced_memory

    if isinstance(device_map, str):
        if device_map not in AUTO_MAPS:
            raise InterpError(f"device_map: must be one of {list(AUTO_MAPS)} or a dict of module -> device; "
                              f"given {device_map!r}")
        if max_memory is not None and not isinstance(max_memory, dict):
            raise InterpError(f"max_memory: expected a dict such as {{0: '20GiB', 'cpu': '60GiB'}}; given {max_memory!r}")
        if device_map in ("auto", "balanced", "balanced_low_0"):
            max_memory = get_balanced_memory(model, max_memory=max_memory, no_split_module_classes=NO_SPLIT,
                                             low_zero=device_map == "balanced_low_0")
        device_map = dict(infer_auto_device_map(model, max_memory=max_memory, no_split_module_classes=NO_SPLIT))
    elif isinstance(device_map, dict):
        names = {n for n, _ in model.named_modules()}
        bad = [k for k in device_map if k != "" and k not in names]
        if bad:
            top = [n for n, _ in model.named_children()]
            raise InterpError(f"device_map: {bad[0]!r} is not a module of this model; use names such as {top}")
        device_map = {k: _device(v) for k, v in device_map.items()}
    else:
        raise InterpError(f"device_map: expected 'auto' or a dict of module -> device; given {type(device_map).__name__}")
    if model.cfg.tie_embeddings:
        # the unembedding reads the embedding's matrix in its own forward: they must share a live device
        emb = _module_device(device_map, "embed")
        if emb == "disk" or (emb == "cpu" and _execution_device(device_map).type != "cpu"):
            raise InterpError("device_map: this model ties its unembedding to the embedding, so 'embed' must be "
                              f"on an execution device (a GPU, or the CPU when no GPU is used); given {emb!r}")
        device_map["unembed"] = emb
    if "disk" in device_map.values() and offload_folder is None:
        raise InterpError("offload_folder: the device map sends modules to 'disk'; give a folder for their weights")
    missing = [n for n, _ in model.named_parameters() if _module_device(device_map, n) is None]
    if missing:
        raise InterpError(f"device_map: no device for parameters {missing[:4]}; map their modules "
                          "(or give '' for the rest)")
    main = _execution_device(device_map)
    model = dispatch_model(model, device_map=device_map, main_device=str(main), offload_dir=offload_folder)
    emb = _module_device(device_map, "embed")
    model.input_device = main if emb in ("cpu", "disk") and main.type != "cpu" else (
        torch.device("cpu") if emb in ("cpu", "disk") else torch.device(f"cuda:{emb}" if isinstance(emb, int) else emb))
    return model
