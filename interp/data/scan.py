"""One engine for every corpus scan: stream documents, shard them over ranks, checkpoint, merge.

``run_scan(model, corpus, consumers, ...)`` reads the corpus in order and numbers its non-empty documents;
``shard_docs`` consecutive documents make a *shard*, and shard ``s`` belongs to rank ``s % world_size``
(one process: every shard). A rank tokenizes only its own shards' documents, in a background thread, cuts
each into windows (:func:`~interp.data.corpus.document_windows`: never across a document boundary) and
runs them through the model ``batch_size`` at a time, always in the same batches whatever the world size,
so a result does not depend on how many processes computed it. The cached activations of the scored
positions go to the *consumers* (a running top-k, running statistics, an activation-dataset writer ...).

After each completed shard a rank checkpoints its consumers' state and the shards it has done
(``checkpoint_dir/rank{r}-of-{w}.safetensors``, written atomically); a scan started again with the same
model, corpus and options and the same world size skips those shards. At the end the consumers merge
their state across ranks with collectives (``all_gather`` / ``all_reduce``), so every rank holds the full
result and rank 0 writes it.

A consumer implements ``hooks`` (names it needs), ``update(acts, batch)``, and optionally ``state()`` /
``load_state(state)`` (tensors to checkpoint), ``end_shard(shard)`` and ``merge(info)``.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from interp.analysis._inputs import model_device
from interp.data.corpus import Window, as_corpus, document_windows, tokenized
from interp.data.distributed import all_gather, all_gather_object, all_reduce, rank_world
from interp.errors import InterpError
from interp.io import atomic_path

__all__ = ["Batch", "Consumer", "RunningStats", "ScanInfo", "TopK", "activation_stats", "forward_cache", "meta_digest",
           "run_scan", "select_top", "window_batches"]


@dataclass
class Batch:
    """Windows run together: ``tokens``/``scored`` ``[B, L]`` on the model's device; ``doc``, ``offset``
    ``[B]`` on the CPU (window ``i``'s token ``p`` is position ``offset[i] + p`` of document ``doc[i]``)."""

    tokens: torch.Tensor
    scored: torch.Tensor
    doc: torch.Tensor
    offset: torch.Tensor
    windows: list[Window]
    doc_tokens: dict[int, torch.Tensor]  # every document a window of this batch comes from
    shard: int


class Consumer:
    """Base class: override ``update`` (and the rest when the consumer has state)."""

    hooks: frozenset[str] = frozenset()

    def update(self, acts: dict[str, torch.Tensor], batch: Batch) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def state(self) -> dict[str, torch.Tensor]:
        return {}

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        pass

    def end_shard(self, shard: int) -> None:
        pass

    def merge(self, info: ScanInfo) -> None:
        pass


@dataclass
class ScanInfo:
    """What a scan saw: corpus totals, merged over ranks (and over runs, for a resumed scan)."""

    n_docs: int = 0
    n_tokens: int = 0
    n_shards: int = 0
    tokens_sha256: str = ""  # over the shards' token hashes, in shard order
    shard_tokens: dict[int, int] = field(default_factory=dict)  # tokens per shard (shards without any: absent)
    shards_run: list[int] = field(default_factory=list)  # by this rank in this call (resumed ones excluded)


def _check_int(name: str, v, lo: int, hi: int | None = None) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < lo or (hi is not None and v > hi):
        rng = f"[{lo}, {hi}]" if hi is not None else f">= {lo}"
        raise InterpError(f"{name}: must be an int {rng}; given {v!r}")
    return v


def meta_digest(meta: dict) -> str:
    return hashlib.sha256(json.dumps(meta, sort_keys=True, default=str).encode()).hexdigest()


def _load_checkpoint(path: Path, digest: str, consumers: Sequence[Consumer]) -> dict[int, tuple[int, str]]:
    if not path.is_file():
        return {}
    with safe_open(str(path), framework="pt") as f:
        info = f.metadata() or {}
        if info.get("digest") != digest:
            return {}  # another model, corpus or options: start afresh (the file is overwritten)
        state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open is not a mapping
    for i, c in enumerate(consumers):
        prefix = f"{i}."
        c.load_state({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})
    return {int(s): tuple(v) for s, v in json.loads(info["done"]).items()}


def _save_checkpoint(path: Path, digest: str, consumers: Sequence[Consumer], done: dict) -> None:
    tensors = {f"{i}.{k}": v.detach().to("cpu").contiguous()
               for i, c in enumerate(consumers) for k, v in c.state().items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"digest": digest, "done": json.dumps(done)})


def window_batches(windows: list[tuple[Window, torch.Tensor]], batch_size: int, shard: int, device):
    """``(window, its document's tokens)`` pairs -> :class:`Batch` es of ``batch_size``, right-padded (padding is never
    scored; causal attention keeps it from reaching real tokens)."""
    for s in range(0, len(windows), batch_size):
        group = windows[s:s + batch_size]
        L = max(len(w.tokens) for w, _ in group)
        toks = torch.zeros(len(group), L, dtype=torch.long)
        scored = torch.zeros(len(group), L, dtype=torch.bool)
        for i, (w, _) in enumerate(group):
            toks[i, :len(w.tokens)] = w.tokens
            scored[i, w.scored_from:len(w.tokens)] = True
        yield Batch(toks.to(device), scored.to(device), torch.tensor([w.doc for w, _ in group]),
                    torch.tensor([w.offset for w, _ in group]), [w for w, _ in group],
                    {w.doc: d for w, d in group}, shard)


def forward_cache(model, tokens: torch.Tensor, names: set[str]) -> dict[str, torch.Tensor]:
    """The cached activations ``names`` of one forward pass (no logits kept)."""
    # device=: a model spread over several GPUs (device_map) hands every activation back on the input's device
    _, cache = model.run_with_cache(tokens, names_filter=lambda n: n in names, return_type=None,
                                    device=tokens.device)
    return {n: cache[n] for n in names}


def run_scan(model, corpus, consumers: Sequence[Consumer], *, seq_len: int | None = None, overlap: int = 0,
             batch_size: int = 8, shard_docs: int = 64, checkpoint_dir=None, meta: dict | None = None,
             progress: bool = True, desc: str = "scanning") -> ScanInfo:
    """Run ``corpus`` through ``model`` once, feeding ``consumers``; see the module docstring.

    ``seq_len`` (default ``n_ctx``) and ``overlap`` shape the windows; ``shard_docs`` consecutive
    documents make a shard (the unit of work per rank and of checkpointing; a rank reads every document
    but tokenizes only its own shards'). ``checkpoint_dir`` enables resuming; ``meta`` (model, corpus
    and option fingerprints) decides whether a checkpoint there belongs to this scan. The tqdm bar (rank
    0 only) counts scored tokens: rate in tokens/s and an ETA from the corpus size.
    """
    cfg = model.cfg
    seq_len = int(cfg.n_ctx) if seq_len is None else seq_len
    _check_int("seq_len", seq_len, 1, int(cfg.n_ctx))
    _check_int("overlap", overlap, 0, seq_len - 1)
    _check_int("batch_size", batch_size, 1)
    _check_int("shard_docs", shard_docs, 1)
    corpus = as_corpus(corpus)
    rank, world = rank_world()
    names = set().union(*(c.hooks for c in consumers))
    if hasattr(model, "check_hook_name"):
        for n in sorted(names):
            model.check_hook_name(n)

    digest = meta_digest({**(meta or {}), "seq_len": seq_len, "overlap": overlap, "batch_size": batch_size,
                          "shard_docs": shard_docs, "world": world})
    ckpt = None if checkpoint_dir is None else Path(checkpoint_dir) / f"rank{rank}-of-{world}.safetensors"
    # shard -> (tokens, sha256 of its token ids): what this rank has finished, resumed ones included
    done = _load_checkpoint(ckpt, digest, consumers) if ckpt is not None else {}
    device = model_device(model)
    info = ScanInfo()
    stats: dict = {}

    from interp.progress import progress_bar

    bar = progress_bar(desc=desc, unit="tok", unit_scale=True, enabled=progress and rank == 0,
               total=None if corpus.n_tokens is None else math.ceil(corpus.n_tokens / world))

    def run_shard(shard: int, docs: list[tuple[int, torch.Tensor]]) -> None:
        windows = [(w, toks) for di, toks in docs for w in document_windows(di, toks, seq_len, overlap)]
        for batch in window_batches(windows, batch_size, shard, device):
            with torch.no_grad():
                acts = forward_cache(model, batch.tokens, names)
            for c in consumers:
                c.update(acts, batch)
            if bar.total is None and corpus.n_chars and stats.get("chars"):
                # ETA from the raw size: tokens per character so far times the corpus's characters
                bar.total = math.ceil(corpus.n_chars * stats["tokens"] / stats["chars"] / world)
            bar.update(int(batch.scored.sum()))
        for c in consumers:
            c.end_shard(shard)
        h = hashlib.sha256()
        for _, toks in docs:
            h.update(len(toks).to_bytes(8, "little") + toks.numpy().tobytes())
        done[shard] = (sum(len(t) for _, t in docs), h.hexdigest())
        info.shards_run.append(shard)
        if ckpt is not None:
            _save_checkpoint(ckpt, digest, consumers, done)

    def mine(i: int) -> bool:
        s = i // shard_docs
        return s % world == rank and s not in done

    pending: list[tuple[int, torch.Tensor]] = []
    shard = None
    try:
        for di, toks in tokenized(model, corpus, select=mine, stats=stats):
            s = di // shard_docs
            if s != shard and pending:
                run_shard(shard, pending)
                pending = []
            shard = s
            pending.append((di, toks))
        if pending:
            run_shard(shard, pending)
    finally:
        bar.close()
    info.n_docs = stats["docs"]
    if info.n_docs == 0:
        raise InterpError("corpus: the corpus is empty (no tokens)")
    info.n_shards = math.ceil(info.n_docs / shard_docs)
    shards = {}
    for part in all_gather_object(done):
        shards.update(part)
    info.shard_tokens = {s: n for s, (n, _) in sorted(shards.items())}
    info.n_tokens = sum(info.shard_tokens.values())
    if info.n_tokens == 0:
        raise InterpError("corpus: the corpus is empty (no tokens)")
    info.tokens_sha256 = hashlib.sha256("".join(sha for _, (_, sha) in sorted(shards.items())).encode()).hexdigest()
    for c in consumers:
        c.merge(info)
    return info


# --- consumers ------------------------------------------------------------------------------------------------

_NO_GID = torch.iinfo(torch.long).max  # empty slots sort after every real position


def select_top(values: torch.Tensor, gid: torch.Tensor, k: int) -> torch.Tensor:
    """Row indices ``[k, d]`` of the top ``k`` per column, ordered by value (desc) then ``gid`` (asc).

    A total order, so the top-k of a union does not depend on how it was split and merged (ties included).
    """
    by_gid = torch.sort(gid, dim=0, stable=True).indices
    by_val = torch.sort(values.gather(0, by_gid), dim=0, descending=True, stable=True).indices
    return by_gid.gather(0, by_val)[:k]


class TopK(Consumer):
    """Running top-``k`` positions per feature of one hook, with the tokens around each.

    State per hook (CPU): ``values [k, d]`` float32 (-inf = empty), ``gid [k, d]`` (document << 32 |
    position), ``context [k, d, before + 1 + after]`` token ids (-1 = none): ``before`` tokens the model saw
    in that window, the trigger, then ``after`` tokens of the document.
    """

    def __init__(self, hooks: Sequence[str], k: int, before: int, after: int):
        self.hooks = set(hooks)
        self.k, self.before, self.after = k, before, max(1, after)  # one after-token at least: the next token
        self.values: dict[str, torch.Tensor] = {}
        self.gid: dict[str, torch.Tensor] = {}
        self.context: dict[str, torch.Tensor] = {}

    def _context_table(self, batch: Batch) -> torch.Tensor:
        """``[B, before + L + after]``: entry ``j`` of row ``i`` is document position ``offset - before + j``."""
        B, L = batch.tokens.shape
        ext = torch.full((B, self.before + L + self.after), -1, dtype=torch.long)
        for i, w in enumerate(batch.windows):
            d = batch.doc_tokens[w.doc]
            hi = min(len(d), w.offset + L + self.after)
            ext[i, self.before:self.before + hi - w.offset] = d[w.offset:hi]
        return ext

    def update(self, acts, batch):
        B, L = batch.tokens.shape
        width = self.before + 1 + self.after
        ext = None
        gid_all = ((batch.doc[:, None] << 32) | (batch.offset[:, None] + torch.arange(L))).reshape(-1)
        for name in self.hooks:
            a = acts[name].float().reshape(B, L, -1).masked_fill(~batch.scored[..., None], float("-inf"))
            a = a.reshape(B * L, -1)
            # rows are in gid order already, so a stable sort by value is the total order of select_top
            top = torch.sort(a, dim=0, descending=True, stable=True)
            kk = min(self.k, B * L)
            v, rows = top.values[:kk].cpu(), top.indices[:kk].cpu()
            if ext is None:
                ext = self._context_table(batch).unfold(1, width, 1)  # [B, L, width]
            ctx = ext[rows // L, rows % L]  # [kk, d, width]
            g = gid_all[rows]
            if name in self.values:
                v, g = torch.cat([self.values[name], v]), torch.cat([self.gid[name], g])
                ctx = torch.cat([self.context[name], ctx])
            self._keep(name, v, g, ctx)

    def _keep(self, name, v, g, ctx):
        g = g.masked_fill(torch.isneginf(v), _NO_GID)
        idx = select_top(v, g, self.k)
        self.values[name], self.gid[name] = v.gather(0, idx), g.gather(0, idx)
        self.context[name] = ctx.gather(0, idx[..., None].expand(-1, -1, ctx.shape[-1]))

    def _pad(self, name):
        v = self.values[name]
        if v.shape[0] < self.k:  # fewer positions than k so far: pad so every rank gathers one shape
            n = self.k - v.shape[0]
            self.values[name] = torch.cat([v, torch.full((n, v.shape[1]), float("-inf"))])
            self.gid[name] = torch.cat([self.gid[name], torch.full((n, v.shape[1]), _NO_GID)])
            c = self.context[name]
            self.context[name] = torch.cat([c, torch.full((n, *c.shape[1:]), -1, dtype=c.dtype)])

    def state(self):
        out = {}
        for name in self.values:
            out |= {f"{name}/values": self.values[name], f"{name}/gid": self.gid[name],
                    f"{name}/context": self.context[name]}
        return out

    def load_state(self, state):
        for key, t in state.items():
            name, part = key.rsplit("/", 1)
            getattr(self, {"values": "values", "gid": "gid", "context": "context"}[part])[name] = t

    def merge(self, info):
        _, world = rank_world()
        if world == 1:
            return
        shapes = union_over_ranks(
            {n: (int(v.shape[1]), int(self.context[n].shape[-1])) for n, v in self.values.items()})
        for name in sorted(self.hooks):
            if name not in self.values:  # a rank that saw no window: contribute empty slots
                d, width = shapes[name]
                self.values[name] = torch.full((self.k, d), float("-inf"))
                self.gid[name] = torch.full((self.k, d), _NO_GID)
                self.context[name] = torch.full((self.k, d, width), -1, dtype=torch.long)
            self._pad(name)
            v = torch.cat(all_gather(self.values[name]))
            g = torch.cat(all_gather(self.gid[name]))
            c = torch.cat(all_gather(self.context[name]))
            self._keep(name, v, g, c)


def union_over_ranks(mine: dict) -> dict:
    """The union of every rank's dict (e.g. feature counts per hook: a rank that saw no window has none)."""
    out: dict = {}
    for d in all_gather_object(mine):
        out.update(d)
    return out


class RunningStats(Consumer):
    """Count, mean, std, min, max and the share of positive values per feature of each hook.

    Sums are float64 and merged with ``all_reduce``, so a sharded run equals a single one to float64
    rounding.
    """

    def __init__(self, hooks: Sequence[str]):
        self.hooks = set(hooks)
        self.s: dict[str, dict[str, torch.Tensor]] = {}

    def update(self, acts, batch):
        for name in self.hooks:
            a = acts[name]
            x = a.reshape(a.shape[0], a.shape[1], -1)[batch.scored].double().cpu()  # [n, features]
            s = self.s.setdefault(name, {
                "count": torch.zeros((), dtype=torch.float64), "sum": torch.zeros(x.shape[1], dtype=torch.float64),
                "sumsq": torch.zeros(x.shape[1], dtype=torch.float64),
                "min": torch.full((x.shape[1],), float("inf"), dtype=torch.float64),
                "max": torch.full((x.shape[1],), float("-inf"), dtype=torch.float64),
                "positive": torch.zeros(x.shape[1], dtype=torch.float64)})
            s["count"] += x.shape[0]
            s["sum"] += x.sum(0)
            s["sumsq"] += (x * x).sum(0)
            s["positive"] += (x > 0).sum(0)
            if x.shape[0]:
                s["min"] = torch.minimum(s["min"], x.min(0).values)
                s["max"] = torch.maximum(s["max"], x.max(0).values)

    def state(self):
        return {f"{n}/{k}": v for n, s in self.s.items() for k, v in s.items()}

    def load_state(self, state):
        for key, t in state.items():
            name, part = key.rsplit("/", 1)
            self.s.setdefault(name, {})[part] = t

    def merge(self, info):
        _, world = rank_world()
        if world == 1:
            return
        shapes = union_over_ranks({n: int(s["sum"].shape[0]) for n, s in self.s.items()})
        for name in sorted(self.hooks):
            d = shapes[name]
            s = self.s.get(name) or {
                "count": torch.zeros((), dtype=torch.float64), "sum": torch.zeros(d, dtype=torch.float64),
                "sumsq": torch.zeros(d, dtype=torch.float64), "positive": torch.zeros(d, dtype=torch.float64),
                "min": torch.full((d,), float("inf"), dtype=torch.float64),
                "max": torch.full((d,), float("-inf"), dtype=torch.float64)}
            self.s[name] = {k: all_reduce(v, "min" if k == "min" else "max" if k == "max" else "sum")
                            for k, v in sorted(s.items())}




def activation_stats(model, corpus, hooks, *, seq_len: int | None = None, overlap: int = 0, batch_size: int = 8,
                     shard_docs: int = 64, checkpoint_dir=None, progress: bool = True):
    """Per-feature statistics of ``hooks`` over every scored token of ``corpus`` (sharded under torchrun).

    ``hooks``: names or per-block suffixes (``"mlp.hook_post"`` = every block's). Returns a DataFrame
    ``hook, layer, feature, count, mean, std, min, max, frac_positive`` (``std`` the population standard
    deviation; ``frac_positive`` the share of positions where the feature is > 0, e.g. how often a neuron
    fires). ``checkpoint_dir`` makes an interrupted run resumable.
    """
    import pandas as pd

    from interp.analysis.neurons import model_fingerprint
    from interp.analysis.probing import expand_hooks, hook_layer

    names = expand_hooks(model, hooks)
    corpus = as_corpus(corpus)
    stats = RunningStats(names)
    meta = {"kind": "stats", "model": model_fingerprint(model), "corpus": corpus.fingerprint(), "hooks": names}
    run_scan(model, corpus, [stats], seq_len=seq_len, overlap=overlap, batch_size=batch_size,
             shard_docs=shard_docs, checkpoint_dir=checkpoint_dir, meta=meta, progress=progress,
             desc="activation statistics")
    frames = []
    for name in names:
        s = stats.s[name]
        n = s["count"]
        mean = s["sum"] / n
        var = (s["sumsq"] / n - mean * mean).clamp_min(0)
        frames.append(pd.DataFrame({
            "hook": name, "layer": hook_layer(name), "feature": range(len(mean)), "count": int(n),
            "mean": mean.numpy(), "std": var.sqrt().numpy(), "min": s["min"].numpy(), "max": s["max"].numpy(),
            "frac_positive": (s["positive"] / n).numpy()}))
    return pd.concat(frames, ignore_index=True)
