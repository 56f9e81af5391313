"""Where an SAE's training activations come from: a tensor, shards on disk, or a model run over a corpus.

Everything becomes an :class:`ActivationSource`: a list of shards of known sizes, each loaded on demand as a
``[n_i, d_in]`` tensor. Batches walk the shards epoch after epoch, the shard order and the rows inside each
shard shuffled by ``(seed, epoch)``, so the batch of any step is a pure function of the step — which is what
lets a checkpoint resume exactly — and only one or two shards are in memory at a time.

Accepted ``source`` forms (``as_source``):

* a float tensor ``[n, d_in]`` (or ``[..., d_in]``, flattened);
* a path to a ``.safetensors`` or ``.npy`` file, or a folder of them (shards in name order); a safetensors
  file holds one tensor, or several of which ``activations`` is used;
* ``(model, hook_name, corpus)``: the activations of ``hook_name`` over ``corpus`` (text, a list of texts or
  token ids; see ``model_activations``), gathered once into memory;
* ``(dataset, hook_name)``: an ``interp.data.ActivationDataset`` (or its folder) and one of its hooks,
  read shard by shard from the memory-mapped files;
* **adapter point** for activation datasets built elsewhere: any object with
  ``shard_sizes`` (a list of ints) and ``load_shard(i) -> Tensor [n_i, d_in]``, optionally ``d_in`` and
  ``metadata`` (a dict with ``hook_name``, ``model_name``...).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch

from interp.errors import InterpError

__all__ = ["ActivationSource", "as_source", "check_hook_name", "model_activations", "token_batches"]


class ActivationSource:
    """Shards of activations with known sizes, loaded lazily (see the module docstring)."""

    def __init__(self, sizes: list[int], load: Callable[[int], torch.Tensor], d_in: int, metadata=None):
        if not sizes or sum(sizes) == 0:
            raise InterpError("source: holds no activations (0 rows)")
        self.sizes, self._load, self.d_in = [int(s) for s in sizes], load, int(d_in)
        self.metadata = dict(metadata or {})
        self._cache: tuple[int, torch.Tensor] | None = None

    @property
    def n(self) -> int:
        return sum(self.sizes)

    def shard(self, i: int) -> torch.Tensor:
        if self._cache is None or self._cache[0] != i:
            x = torch.as_tensor(self._load(i))
            if x.ndim < 2 or x.shape[-1] != self.d_in or not x.dtype.is_floating_point:
                raise InterpError(f"source: shard {i} must be float activations [n, d_in={self.d_in}]; "
                                  f"given dtype={x.dtype}, shape={tuple(x.shape)}")
            self._cache = (i, x.reshape(-1, self.d_in))
        return self._cache[1]

    def sample(self, n: int, seed: int = 0) -> torch.Tensor:
        """Up to ``n`` rows drawn evenly from every shard (for initialisation and scale estimates)."""
        gen = torch.Generator().manual_seed(seed)
        per = [max(1, round(n * s / self.n)) for s in self.sizes]
        rows = [self.shard(i)[torch.randperm(s, generator=gen)[: min(p, s)]] for i, (s, p) in
                enumerate(zip(self.sizes, per)) if s]
        return torch.cat(rows).float()

    def _epoch_order(self, seed: int, epoch: int) -> list[int]:
        gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        return torch.randperm(len(self.sizes), generator=gen).tolist()

    def batches(self, batch_size: int, seed: int = 0, start_step: int = 0) -> Iterator[torch.Tensor]:
        """Endless ``[batch_size, d_in]`` batches from step ``start_step`` on (deterministic in the step)."""
        pos = start_step * batch_size
        epoch, offset = divmod(pos, self.n)
        pending: list[torch.Tensor] = []
        have = 0
        while True:
            for sid in self._epoch_order(seed, epoch):
                size = self.sizes[sid]
                if offset >= size:  # a whole shard before the resume point: skip without loading it
                    offset -= size
                    continue
                gen = torch.Generator().manual_seed((seed * 1_000_003 + epoch) * 65_537 + sid)
                perm = torch.randperm(size, generator=gen)
                x = self.shard(sid)
                while offset < size:
                    take = min(batch_size - have, size - offset)
                    pending.append(x[perm[offset : offset + take]])
                    have += take
                    offset += take
                    if have == batch_size:
                        yield torch.cat(pending).float()
                        pending, have = [], 0
                offset = 0
            epoch += 1


def _tensor_source(x: torch.Tensor, metadata=None) -> ActivationSource:
    if not x.dtype.is_floating_point or x.ndim < 1:
        raise InterpError(f"source: a tensor source must be float activations [n, d_in]; given dtype={x.dtype}, "
                          f"shape={tuple(x.shape)}")
    x = x.detach().reshape(-1, x.shape[-1])
    if not torch.isfinite(x).all():
        raise InterpError("source: the activations contain NaN or inf")
    return ActivationSource([x.shape[0]], lambda i: x, x.shape[-1], metadata)


def _file_shape(path: Path) -> tuple[tuple[int, ...], Callable[[], torch.Tensor]]:
    if path.suffix == ".npy":
        arr = np.load(path, mmap_mode="r")
        return tuple(arr.shape), lambda: torch.from_numpy(np.ascontiguousarray(arr))
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            keys = list(f.keys())
            key = "activations" if "activations" in keys else (keys[0] if len(keys) == 1 else None)
            if key is None:
                raise InterpError(f"source: {path} holds tensors {keys}; name the activations 'activations'")
            shape = tuple(f.get_slice(key).get_shape())

        def load() -> torch.Tensor:
            with safe_open(str(path), framework="pt") as f:
                return f.get_tensor(key)

        return shape, load
    raise InterpError(f"source: {path} is not a .safetensors or .npy file")


def _disk_source(path: Path) -> ActivationSource:
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in (".safetensors", ".npy"))
        if not files:
            raise InterpError(f"source: folder {path} holds no .safetensors or .npy activation shards")
    elif path.is_file():
        files = [path]
    else:
        raise InterpError(f"source: {path} does not exist (expected an activation file or folder of shards)")
    shapes, loads = zip(*(_file_shape(p) for p in files))
    d_in = {s[-1] for s in shapes}
    if len(d_in) != 1:
        raise InterpError(f"source: shards in {path} disagree on d_in: {sorted(d_in)}")
    sizes = [int(np.prod(s[:-1])) for s in shapes]
    return ActivationSource(sizes, lambda i: loads[i](), d_in.pop(), {"dataset_path": str(path)})


def token_batches(model, corpus, seq_len: int | None = None, batch_size: int = 16) -> list[torch.Tensor]:
    """The corpus (as in ``scan_top_contexts``) cut into chunks of ``seq_len`` (default ``n_ctx``) tokens per
    document, stacked into ``[batch, pos]`` batches of equal-length chunks (so nothing is padded)."""
    from interp.data.corpus import as_corpus, tokenized

    seq_len = int(seq_len or model.cfg.n_ctx)
    if not 1 <= seq_len <= model.cfg.n_ctx:
        raise InterpError(f"seq_len: must be in [1, n_ctx={model.cfg.n_ctx}]; given {seq_len}")
    by_len: dict[int, list[torch.Tensor]] = {}
    for _, d in tokenized(model, as_corpus(corpus)):
        for o in range(0, len(d), seq_len):
            by_len.setdefault(len(d[o : o + seq_len]), []).append(d[o : o + seq_len])
    return [torch.stack(g[i : i + batch_size]) for g in by_len.values() for i in range(0, len(g), batch_size)]


def check_hook_name(model, hook_name) -> str:
    names = set(getattr(model, "hook_dict", {}) or {})
    if names and hook_name not in names:
        near = sorted(n for n in names if n.split(".")[-1] == str(hook_name).split(".")[-1])[:4]
        raise InterpError(f"hook_name: the model has no hook {hook_name!r}"
                          f"{'; similar: ' + ', '.join(near) if near else ''}")
    return hook_name


@torch.no_grad()
def model_activations(model, hook_name: str, corpus, *, seq_len: int | None = None, batch_size: int = 16,
                      max_tokens: int | None = None, time_budget: float | None = None,
                      progress: bool = False) -> torch.Tensor:
    """Activations of ``hook_name`` over ``corpus`` as float32 ``[tokens, d]`` on the CPU.

    The corpus (a string, a list of strings, token ids; as in ``scan_top_contexts``) is split into documents
    and each into chunks of ``seq_len`` (default ``n_ctx``) tokens; chunks of equal length run together in
    batches (so nothing is padded). Dimensions after ``[batch, pos]`` are flattened (``hook_z`` gives
    ``n_heads * d_head``). ``max_tokens`` stops after that many tokens; ``time_budget`` (seconds) after the
    batch that reaches it (at least one batch is read). ``hook_name`` may be a list of hooks: their activations
    side by side in each row, from one pass (a cross-layer transcoder reads every layer).
    """
    import time

    from interp.analysis._inputs import model_device
    from interp.progress import progress_bar

    names = [hook_name] if isinstance(hook_name, str) else list(hook_name)
    for name in names:
        check_hook_name(model, name)
    groups = token_batches(model, corpus, seq_len, batch_size)
    out, total = [], 0
    dev = model_device(model)
    start = time.perf_counter()
    desc = f"activations {names[0]}{f' (+{len(names) - 1})' if len(names) > 1 else ''}"
    for toks in progress_bar(groups, desc=desc, unit="batch", enabled=progress):
        _, cache = model.run_with_cache(toks.to(dev), names_filter=lambda n: n in names)
        a = torch.cat([cache[n].reshape(toks.shape[0] * toks.shape[1], -1) for n in names], -1).float().cpu()
        out.append(a)
        total += a.shape[0]
        if max_tokens is not None and total >= max_tokens:
            break
        if time_budget is not None and time.perf_counter() - start >= time_budget:
            break
    acts = torch.cat(out)
    return acts[:max_tokens] if max_tokens is not None else acts


def as_source(source, *, seq_len: int | None = None, max_tokens: int | None = None,
              time_budget: float | None = None, progress: bool = False) -> ActivationSource:
    """Turn any accepted ``source`` form (module docstring) into an :class:`ActivationSource`.

    ``max_tokens`` and ``time_budget`` (seconds) bound the collection from ``(model, hook_name, corpus)``."""
    if isinstance(source, ActivationSource):
        return source
    if isinstance(source, torch.Tensor):
        return _tensor_source(source)
    if isinstance(source, np.ndarray):
        return _tensor_source(torch.from_numpy(np.ascontiguousarray(source)))
    if isinstance(source, (str, Path)):
        return _disk_source(Path(source))
    if isinstance(source, tuple) and len(source) == 3:
        model, hook_name, corpus = source
        acts = model_activations(model, hook_name, corpus, seq_len=seq_len, max_tokens=max_tokens,
                                 time_budget=time_budget, progress=progress)
        name = getattr(model.cfg, "name", None) or getattr(model.cfg, "model_name", None)
        meta = {"hook_name": hook_name, "model_name": name, "context_size": int(seq_len or model.cfg.n_ctx),
                "prepend_bos": getattr(model.cfg, "bos_token_id", None) is not None}
        return _tensor_source(acts, meta)
    if isinstance(source, tuple) and len(source) == 2:  # (interp.data.ActivationDataset or its folder, hook)
        from interp.data import ActivationDataset

        ds, hook = source
        ds = ds if isinstance(ds, ActivationDataset) else ActivationDataset(ds)
        ds._check_hook(hook)
        sizes = [int(s["rows"]) for s in ds.manifest["shards"]]
        meta = {"hook_name": hook, "model_name": (ds.manifest.get("model") or {}).get("name"),
                "dataset_path": str(ds.folder)}
        return ActivationSource(sizes, lambda i: ds.shard(i)[hook].float().reshape(sizes[i], -1),
                                int(ds.shard(0)[hook][0].numel()), meta)
    if hasattr(source, "shard_sizes") and hasattr(source, "load_shard"):
        sizes = list(source.shard_sizes)
        d_in = getattr(source, "d_in", None) or int(torch.as_tensor(source.load_shard(0)).shape[-1])
        return ActivationSource(sizes, source.load_shard, d_in, getattr(source, "metadata", None))
    raise InterpError("source: expected activations [n, d_in], a path to .safetensors/.npy shards, "
                      "(model, hook_name, corpus), or an object with shard_sizes and load_shard; "
                      f"given {type(source).__name__}")
