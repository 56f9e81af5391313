"""Activation datasets on disk: write once from a corpus scan, read back memory-mapped without the model.

Layout of a dataset folder::

    manifest.json              format, model (name + weight fingerprint), hooks (feature shape, dtype),
                               corpus (source fingerprint, sha256 of the token ids, documents, tokens),
                               windowing (seq_len, overlap), shards (file, rows), rows
    shard-000000.safetensors   one per shard of documents: a tensor per hook [rows, *features], and
                               ``doc``, ``position``, ``token_id`` [rows] (int64): where each row comes from

Rows are the scored token positions of the corpus (every token once, in corpus order within a shard;
see :mod:`interp.data.scan`). Each rank writes its own shards' files atomically; rank 0 writes the
manifest last, so a folder with a manifest is complete. A run that stops midway resumes at the shard
after the last completed one.

Reading (the API the probes, the tuned lens and feature learning use)::

    ds = ActivationDataset("acts/")            # checks the manifest
    len(ds), ds.hooks, ds.manifest             # rows, hook names, everything recorded
    x = ds.shard(0)["blocks.1.hook_resid_post"]   # a memory-mapped [rows, d] tensor: no copy
    ds.rows(hook, slice(1000, 2000))           # float32 rows, reading only the shards they sit in
    for xb in ds.iter_batches("blocks.1.hook_resid_post", batch_size=4096, shuffle=True, seed=0): ...
    ds.activations(hook)                       # all rows in one (copied) float tensor
    ds.index()                                 # DataFrame doc, position, token_id per row
    ds.to_probe_activations()                  # interp.analysis.probing.Activations for fit_probes
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors.torch import save_file

from interp.data.distributed import barrier, rank_world
from interp.data.scan import Batch, Consumer, ScanInfo, run_scan
from interp.errors import InterpError
from interp.io import atomic_path, atomic_write_text

__all__ = ["FORMAT", "MANIFEST", "ActivationDataset", "ActivationWriter", "write_activation_dataset"]

FORMAT = "interp-activations"
VERSION = 1
MANIFEST = "manifest.json"
_INDEX = ("doc", "position", "token_id")
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def shard_file(shard: int) -> str:
    return f"shard-{shard:06d}.safetensors"


class ActivationWriter(Consumer):
    """Scan consumer: collect the scored rows of ``hooks`` per shard and write each shard's file."""

    def __init__(self, folder: Path, hooks: Sequence[str], dtype: torch.dtype, manifest: dict):
        self.folder, self.hooks, self.dtype, self.manifest = folder, set(hooks), dtype, manifest
        self.rows: dict[str, list[torch.Tensor]] = {}
        self.shapes: dict[str, list[int]] = {}

    def update(self, acts, batch: Batch):
        scored = batch.scored
        for name in self.hooks:
            a = acts[name]
            self.shapes[name] = list(a.shape[2:])
            self.rows.setdefault(name, []).append(a[scored].to("cpu", self.dtype))
        b_idx, p_idx = scored.cpu().nonzero(as_tuple=True)
        self.rows.setdefault("doc", []).append(batch.doc[b_idx])
        self.rows.setdefault("position", []).append(batch.offset[b_idx] + p_idx)
        self.rows.setdefault("token_id", []).append(batch.tokens.cpu()[b_idx, p_idx])

    def end_shard(self, shard: int):
        tensors = {k: torch.cat(v).contiguous() for k, v in self.rows.items()}
        with atomic_path(self.folder / shard_file(shard)) as tmp:
            save_file(tensors, str(tmp), metadata={"format": FORMAT, "shard": str(shard),
                                                   "shapes": json.dumps(self.shapes)})
        self.rows = {}

    def merge(self, info: ScanInfo):
        barrier()  # every rank's shard files are on disk
        rank, _ = rank_world()
        if rank != 0:
            barrier()
            return
        shards, shapes = [], {}
        for s in info.shard_tokens:  # shards holding any token, in order
            path = self.folder / shard_file(s)
            if not path.is_file():
                raise InterpError(f"activation dataset: shard file {path} is missing after the scan")
            header = _header(path)
            shapes.update(json.loads(header["__metadata__"]["shapes"]))
            shards.append({"file": path.name, "rows": int(header["doc"]["shape"][0])})
        manifest = {**self.manifest, "hooks": {h: {"shape": shapes.get(h), "dtype": str(self.dtype).split(".")[-1]}
                                               for h in sorted(self.hooks)},
                    "corpus": {**self.manifest["corpus"], "n_docs": info.n_docs, "n_tokens": info.n_tokens,
                               "tokens_sha256": info.tokens_sha256},
                    "shards": shards, "rows": sum(s["rows"] for s in shards)}
        atomic_write_text(self.folder / MANIFEST, json.dumps(manifest, indent=2) + "\n")
        shutil.rmtree(self.folder / "checkpoints", ignore_errors=True)  # complete: nothing left to resume
        barrier()


def write_activation_dataset(model, corpus, hooks, folder, *, dtype: str = "float32", seq_len: int | None = None,
                             overlap: int = 0, batch_size: int = 8, shard_docs: int = 64,
                             overwrite: bool = False, progress: bool = True) -> ActivationDataset:
    """Scan ``corpus`` and store the activations at ``hooks`` for every scored token position.

    ``hooks``: names or per-block suffixes (``"resid_post"`` = every block's; see
    :func:`interp.analysis.probing.expand_hooks`). ``dtype``: ``float32`` | ``float16`` | ``bfloat16``.
    Runs sharded under ``torchrun`` and resumes an interrupted run in the same folder; an existing
    complete dataset is only replaced with ``overwrite=True``. Returns the dataset, opened for reading.
    """
    from interp.analysis.neurons import model_fingerprint
    from interp.analysis.probing import expand_hooks
    from interp.data.corpus import as_corpus

    names = expand_hooks(model, hooks)
    if dtype not in _DTYPES:
        raise InterpError(f"dtype: must be one of {list(_DTYPES)}; given {dtype!r}")
    folder = Path(folder)
    if (folder / MANIFEST).exists() and not overwrite:
        raise InterpError(f"folder: {folder / MANIFEST} exists (a complete dataset); pass overwrite=True to replace it")
    corpus = as_corpus(corpus)
    manifest = {"format": FORMAT, "version": VERSION,
                "model": {"name": getattr(model.cfg, "name", None), "fingerprint": model_fingerprint(model)},
                "corpus": {"description": corpus.description, "fingerprint": corpus.fingerprint()},
                "seq_len": int(seq_len or model.cfg.n_ctx), "overlap": overlap}
    if rank_world()[0] == 0:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / MANIFEST).unlink(missing_ok=True)
    barrier()
    writer = ActivationWriter(folder, names, _DTYPES[dtype], manifest)
    meta = {"kind": "activations", "manifest": manifest, "hooks": names, "dtype": dtype}
    run_scan(model, corpus, [writer], seq_len=seq_len, overlap=overlap, batch_size=batch_size,
             shard_docs=shard_docs, checkpoint_dir=folder / "checkpoints", meta=meta, progress=progress,
             desc="writing activations")
    return ActivationDataset(folder)


# --- reading -----------------------------------------------------------------------------------------------

_ST_DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": np.int16, "I64": np.int64, "I32": np.int32,
              "F64": np.float64}


def _header(path: Path) -> dict:
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
    header["__data_start__"] = 8 + n
    return header


def _mmap(path: Path, header: dict, name: str) -> torch.Tensor:
    """A tensor whose storage is the file itself (copy-on-write map: nothing is read until touched)."""
    h = header[name]
    start, end = h["data_offsets"]
    shape = tuple(h["shape"])
    if end == start:
        t = torch.from_numpy(np.zeros(shape, dtype=_ST_DTYPES[h["dtype"]]))
    else:
        arr = np.memmap(path, dtype=_ST_DTYPES[h["dtype"]], mode="c", offset=header["__data_start__"] + start,
                        shape=shape)
        t = torch.from_numpy(arr)
    return t.view(torch.bfloat16) if h["dtype"] == "BF16" else t


class ActivationDataset:
    """A dataset written by :func:`write_activation_dataset`, read through memory maps.

    ``len(ds)`` rows; ``ds.hooks``; ``ds.manifest`` (the JSON: model, hooks, corpus, shards);
    ``ds.shard(i)`` -> dict of memory-mapped tensors (each hook, ``doc``, ``position``, ``token_id``);
    ``ds.activations(hook, rows=None)`` -> float32 ``[n, features]`` (rows: None = all, a slice or
    indices); ``ds.rows(hook, slice)`` -> the same for a contiguous slice, touching only its shards; ``ds.iter_batches(hook, batch_size, shuffle=False, seed=0)`` -> float32 batches, reading
    one shard at a time; ``ds.index()`` -> DataFrame ``doc, position, token_id``;
    ``ds.to_probe_activations(hooks=None)`` -> :class:`interp.analysis.probing.Activations`.
    """

    def __init__(self, folder):
        self.folder = Path(folder)
        path = self.folder / MANIFEST
        if not path.is_file():
            raise InterpError(f"folder: {path} is missing (not an activation dataset, or its scan did not finish)")
        self.manifest = json.loads(path.read_text())
        if self.manifest.get("format") != FORMAT:
            raise InterpError(f"folder: {path} is not an {FORMAT} manifest (format {self.manifest.get('format')!r})")
        self._headers: dict[int, dict] = {}

    def __len__(self) -> int:
        return int(self.manifest["rows"])

    def __repr__(self) -> str:
        return f"ActivationDataset({str(self.folder)!r}, rows={len(self)}, hooks={self.hooks})"

    @property
    def hooks(self) -> list[str]:
        return list(self.manifest["hooks"])

    @property
    def n_shards(self) -> int:
        return len(self.manifest["shards"])

    def _check_hook(self, hook: str) -> str:
        if hook not in self.manifest["hooks"]:
            raise InterpError(f"hook: this dataset holds {self.hooks}; given {hook!r}")
        return hook

    def shard(self, i: int) -> dict[str, torch.Tensor]:
        if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < self.n_shards:
            raise InterpError(f"shard: must be an int in [0, {self.n_shards}); given {i!r}")
        path = self.folder / self.manifest["shards"][i]["file"]
        if i not in self._headers:
            self._headers[i] = _header(path)
        header = self._headers[i]
        return {name: _mmap(path, header, name) for name in (*self.hooks, *_INDEX)}

    def activations(self, hook: str, rows=None) -> torch.Tensor:
        self._check_hook(hook)
        x = torch.cat([self.shard(i)[hook].float().reshape(self.manifest["shards"][i]["rows"], -1)
                       for i in range(self.n_shards)])
        return x if rows is None else x[rows]

    def rows(self, hook: str, rows: slice) -> torch.Tensor:
        """float32 ``[n, features]`` for a contiguous slice of rows, reading only the shards it touches."""
        self._check_hook(hook)
        start, stop, step = rows.indices(len(self))
        if step != 1:
            raise InterpError(f"rows: expected a contiguous slice (step 1); given {rows!r}")
        parts, base = [], 0
        for i, info in enumerate(self.manifest["shards"]):
            lo, hi = max(start, base), min(stop, base + info["rows"])
            if lo < hi:
                x = self.shard(i)[hook]
                parts.append(x.reshape(x.shape[0], -1)[lo - base:hi - base].float())
            base += info["rows"]
        return torch.cat(parts) if parts else torch.empty(0, 0)

    def iter_batches(self, hook: str, batch_size: int, *, shuffle: bool = False, seed: int = 0,
                     drop_last: bool = False) -> Iterator[torch.Tensor]:
        """float32 ``[batch_size, features]`` batches. ``shuffle`` permutes the shard order and the rows
        within each shard (one shard in memory at a time), deterministically from ``seed``."""
        self._check_hook(hook)
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise InterpError(f"batch_size: must be an int >= 1; given {batch_size!r}")
        gen = torch.Generator().manual_seed(seed)
        order = torch.randperm(self.n_shards, generator=gen).tolist() if shuffle else range(self.n_shards)
        carry = None
        for i in order:
            x = self.shard(i)[hook]
            x = x.reshape(x.shape[0], -1)
            if shuffle:
                x = x[torch.randperm(x.shape[0], generator=gen)]
            x = x.float()
            if carry is not None:
                x = torch.cat([carry, x])
            n_full = x.shape[0] // batch_size * batch_size
            for s in range(0, n_full, batch_size):
                yield x[s:s + batch_size]
            carry = x[n_full:] if n_full < x.shape[0] else None
        if carry is not None and not drop_last:
            yield carry

    def index(self) -> pd.DataFrame:
        cols = {name: torch.cat([self.shard(i)[name] for i in range(self.n_shards)]).numpy() for name in _INDEX}
        return pd.DataFrame(cols)

    def to_probe_activations(self, hooks=None, tokenizer=None):
        """The dataset as probing's :class:`~interp.analysis.probing.Activations` (``prompt`` = document)."""
        from interp.analysis.probing import Activations

        hooks = self.hooks if hooks is None else [self._check_hook(h) for h in hooks]
        idx = self.index()
        tokens = (idx.token_id.map(lambda t: tokenizer.decode([int(t)])) if tokenizer is not None
                  else idx.token_id.map(lambda t: f"<{t}>"))
        index = pd.DataFrame({"example": np.arange(len(idx)), "prompt": idx.doc, "position": idx.position,
                              "token_id": idx.token_id, "token": tokens})
        return Activations({h: self.activations(h) for h in hooks}, index)
