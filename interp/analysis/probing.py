"""Linear probes: is a property linearly readable from the activations at a hook, and along which direction?

Three steps, each a pure function:

1. :func:`collect_activations` runs labelled prompts through the model and keeps the activations at
   chosen hooks and positions (one row per example);
2. :func:`fit_probes` fits a scikit-learn probe per hook (logistic regression for labels, ridge
   regression for numbers) on a training split and scores it on held-out examples, returning the
   per-layer scores and the probe directions;
3. :func:`direction_matches` compares a probe direction with the model's own directions (MLP neuron
   input columns ``W_in``/``W_gate`` and output rows ``W_out``, token embeddings ``W_E`` and
   unembeddings ``W_U``) by cosine similarity.

A high held-out score says the information is *linearly decodable* there, not that the model uses it;
compare against the ``baseline`` column (majority class / R² of predicting the mean).

>>> import torch
>>> from interp.model.config import DecoderConfig
>>> from interp.model.transformer import HookedDecoder
>>> _ = torch.manual_seed(0)
>>> model = HookedDecoder(DecoderConfig(d_vocab=50, n_ctx=16, d_model=32, n_layers=2, n_heads=4))
>>> tokens = torch.randint(0, 50, (40, 6))
>>> labels = (tokens[:, -1] < 25).long()          # is the last token in the first half of the vocab?
>>> acts = collect_activations(model, tokens, "resid_pre", positions=-1)
>>> result = fit_probes(acts, labels, seed=0)
>>> result.scores.columns.tolist()
['hook', 'layer', 'metric', 'train', 'test', 'baseline', 'n_train', 'n_test']
>>> result.directions["blocks.0.hook_resid_pre"].shape
(32,)
>>> direction_matches(model, result.directions["blocks.0.hook_resid_pre"], k=3).columns.tolist()
['kind', 'layer', 'index', 'token', 'cosine']
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from interp.analysis._inputs import as_tokens, check_index, token_str
from interp.data.distributed import all_gather_object, rank_world
from interp.errors import InterpError

__all__ = [
    "Activations",
    "ProbeResult",
    "collect_activations",
    "direction_matches",
    "expand_hooks",
    "fit_probes",
    "hook_layer",
]


# --- collecting activations ------------------------------------------------------------------------
@dataclass
class Activations:
    """Activations at some hooks, one row per example.

    ``acts[hook]`` is a float32 CPU tensor ``[n_examples, features]`` (trailing dims such as heads are
    flattened). ``index`` has one row per example: ``example`` (its row), ``prompt`` (which
    prompt/sequence it came from), ``position``, ``token_id`` and ``token``.
    """

    acts: dict[str, torch.Tensor]
    index: pd.DataFrame

    @property
    def hooks(self) -> list[str]:
        return list(self.acts)

    def __getitem__(self, hook: str) -> torch.Tensor:
        return self.acts[hook]

    def __len__(self) -> int:
        return len(self.index)


_LAYER = re.compile(r"^blocks\.(\d+)\.")
# These hooks are [batch, head, query, key]: there is no per-position vector to probe.
_NOT_PER_POSITION = ("hook_pattern", "hook_attn_scores")


def hook_layer(hook: str) -> int | None:
    """The block index in a hook name (``blocks.3.hook_resid_post`` -> 3), or None (``hook_embed``).

    >>> hook_layer("blocks.3.mlp.hook_post"), hook_layer("hook_embed")
    (3, None)
    """
    m = _LAYER.match(hook)
    return int(m.group(1)) if m else None


def expand_hooks(model, hooks) -> list[str]:
    """Resolve hook names: full names, or a per-block suffix expanded to every block.

    ``"resid_post"``, ``"hook_resid_post"`` and ``"blocks.{layer}.hook_resid_post"`` all mean
    ``blocks.0.hook_resid_post, ..., blocks.{n_layers-1}.hook_resid_post``; ``"mlp.hook_post"`` works too.

    >>> import torch
    >>> from interp.model.config import DecoderConfig
    >>> from interp.model.transformer import HookedDecoder
    >>> model = HookedDecoder(DecoderConfig(d_vocab=50, n_ctx=16, d_model=32, n_layers=2, n_heads=4))
    >>> expand_hooks(model, ["hook_embed", "resid_post"])
    ['hook_embed', 'blocks.0.hook_resid_post', 'blocks.1.hook_resid_post']
    """
    if isinstance(hooks, str):
        hooks = [hooks]
    if not isinstance(hooks, Sequence) or not hooks or not all(isinstance(h, str) for h in hooks):
        raise InterpError(
            f"hooks: expected a hook name or a non-empty list of hook names; given {hooks!r:.80}"
        )
    names = model.hook_dict
    n_layers = int(model.cfg.n_layers)
    out: list[str] = []
    for h in hooks:
        if h in names:
            cands = [h]
        elif "{layer}" in h:
            cands = [h.format(layer=l) for l in range(n_layers)]
        else:
            suffix = (
                h
                if h.split(".")[-1].startswith("hook_")
                else ".".join(h.split(".")[:-1] + ["hook_" + h.split(".")[-1]])
            )
            cands = [f"blocks.{l}.{suffix}" for l in range(n_layers)]
        missing = [c for c in cands if c not in names]
        if missing:
            similar = sorted(n for n in names if n.split(".")[-1] == h.split(".")[-1])[:4]
            raise InterpError(
                f"hooks: {h!r} is not a hook of this model (no {missing[0]!r}); use a full name such as "
                f"'blocks.0.hook_resid_post' or a per-block suffix such as 'resid_post'; similar: {similar}"
            )
        for c in cands:
            if c.split(".")[-1] in _NOT_PER_POSITION:
                raise InterpError(
                    f"hooks: {c!r} is [batch, head, query, key], not one vector per position; "
                    f"probe hook_z, hook_attn_out or the residual stream instead"
                )
            if c not in out:
                out.append(c)
    return out


def _sequences(model, prompts_or_tokens) -> list[torch.Tensor]:
    """Split the input into token sequences [1, len]: texts one by one (no padding), tensors by row."""
    if (
        isinstance(prompts_or_tokens, (list, tuple))
        and prompts_or_tokens
        and all(isinstance(p, str) for p in prompts_or_tokens)
    ):
        return [as_tokens(model, p, name=f"prompts_or_tokens[{i}]") for i, p in enumerate(prompts_or_tokens)]
    tokens = as_tokens(model, prompts_or_tokens, name="prompts_or_tokens")
    return [tokens[i : i + 1] for i in range(tokens.shape[0])]


def _example_positions(positions, lengths: list[int]) -> list[list[int]]:
    """For each sequence, the (non-negative) positions to keep."""
    n = len(lengths)
    if isinstance(positions, str):
        if positions != "all":
            raise InterpError(
                f"positions: expected an int, 'all', or one int per prompt; given {positions!r}"
            )
        return [list(range(length)) for length in lengths]
    if isinstance(positions, torch.Tensor):
        positions = positions.tolist()
    if isinstance(positions, np.ndarray):
        positions = positions.tolist()
    if isinstance(positions, (list, tuple)):
        if len(positions) != n:
            raise InterpError(
                f"positions: a list gives one position per prompt, so it needs {n} entries; "
                f"given {len(positions)}"
            )
        return [
            [check_index(f"positions[{i}]", p, length)]
            for i, (p, length) in enumerate(zip(positions, lengths))
        ]
    return [[check_index("positions", positions, length)] for length in lengths]


@torch.no_grad()
def collect_activations(
    model, prompts_or_tokens, hooks, positions=-1, *, batch_size: int = 32
) -> Activations:
    """Run prompts through the model and keep the activations at ``hooks`` and ``positions``.

    Args:
        model: a ``HookedDecoder``.
        prompts_or_tokens: a list of texts (each tokenised on its own, so no padding is probed), or
            token ids ``[batch, pos]`` (any form :func:`~interp.analysis._inputs.as_tokens` takes).
        hooks: hook names or per-block suffixes (see :func:`expand_hooks`), e.g. ``"resid_post"``.
        positions: ``-1`` (default: each prompt's last token) or any int (negative from each prompt's
            end); ``"all"`` (every token: one example per token, in prompt-then-position order); or
            one int per prompt (e.g. where the subject is).
        batch_size: sequences per forward pass (equal-length sequences are batched together). Under
            ``torchrun`` (a ``torch.distributed`` group initialised) rank ``r`` runs batches ``r, r + world,
            ...`` and the rows are gathered, so every rank returns exactly the one-process result.

    Returns:
        :class:`Activations`; its ``index`` maps example rows to (prompt, position, token).

    >>> import torch
    >>> from interp.model.config import DecoderConfig
    >>> from interp.model.transformer import HookedDecoder
    >>> model = HookedDecoder(DecoderConfig(d_vocab=50, n_ctx=16, d_model=32, n_layers=2, n_heads=4,
    ...                                     norm="rmsnorm", positional="rotary", gated=True, act="silu"))
    >>> tokens = torch.randint(0, 50, (3, 5))
    >>> acts = collect_activations(model, tokens, ["hook_embed", "mlp.hook_post"], positions="all")
    >>> len(acts), tuple(acts["blocks.1.mlp.hook_post"].shape)
    (15, (15, 128))
    """
    names = expand_hooks(model, hooks)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InterpError(f"batch_size: must be a positive integer; given {batch_size!r}")
    seqs = _sequences(model, prompts_or_tokens)
    lengths = [s.shape[1] for s in seqs]
    keep = _example_positions(positions, lengths)

    # Group equal-length sequences so each forward pass is one rectangular batch. Under torchrun rank r
    # runs batches r, r + world, ...: the same batches as one process, so the same numbers.
    by_len: dict[int, list[int]] = {}
    for i, length in enumerate(lengths):
        by_len.setdefault(length, []).append(i)
    batches = [
        (length, members[start : start + batch_size])
        for length, members in by_len.items()
        for start in range(0, len(members), batch_size)
    ]
    rank, world = rank_world()
    per_seq: list[dict[str, torch.Tensor] | None] = [None] * len(seqs)
    for length, chunk in batches[rank::world]:
        tokens = torch.cat([seqs[i] for i in chunk], 0)
        store: dict[str, torch.Tensor] = {}

        def save(act, hook, store=store):
            store[hook.name] = act.detach()

        model.run_with_hooks(tokens, return_type=None, fwd_hooks=[(n, save) for n in names])
        for j, i in enumerate(chunk):
            pos = torch.tensor(keep[i], device=tokens.device)
            out = {}
            for n in names:
                act = store[n]
                if act.ndim < 2 or act.shape[1] != length:
                    raise InterpError(
                        f"hooks: {n!r} gives shape {list(act.shape)}, not [batch, pos={length}, ...]; "
                        f"choose a per-position hook"
                    )
                out[n] = act[j, pos].reshape(len(keep[i]), -1).float().cpu()
            per_seq[i] = out
    if world > 1:  # every rank gets every row
        for part in all_gather_object({i: out for i, out in enumerate(per_seq) if out is not None}):
            for i, out in part.items():
                per_seq[i] = out

    acts = {n: torch.cat([s[n] for s in per_seq], 0) for n in names}
    rows_prompt = [i for i, k in enumerate(keep) for _ in k]
    rows_pos = [p for k in keep for p in k]
    token_ids = [int(seqs[i][0, p]) for i, p in zip(rows_prompt, rows_pos)]
    uniq = sorted(set(token_ids))
    strs = {i: token_str(model, i) for i in uniq}
    index = pd.DataFrame(
        {
            "example": np.arange(len(rows_pos)),
            "prompt": rows_prompt,
            "position": rows_pos,
            "token_id": token_ids,
            "token": [strs[t] for t in token_ids],
        }
    )
    return Activations(acts, index)


# --- fitting probes --------------------------------------------------------------------------------
@dataclass
class ProbeResult:
    """Probes fitted per hook.

    * ``scores``: DataFrame ``hook, layer, metric ("accuracy" | "r2"), train, test, baseline, n_train,
      n_test``; ``layer`` is the block index (missing for hooks outside blocks, e.g. ``hook_embed``);
      ``baseline`` is the held-out score of predicting the training majority class / training mean.
    * ``directions[hook]``: unit vectors in the activation basis, ``[features]`` for a binary or
      regression probe, ``[n_classes, features]`` for multi-class (one row per class, in ``classes``
      order). For a binary probe the vector points towards ``classes[1]``.
    * ``probes[hook]``: the fitted scikit-learn pipelines (standardise, then the linear model).
    * ``train_idx`` / ``test_idx``: the example rows of the split (the same for every hook).
    """

    scores: pd.DataFrame
    directions: dict[str, np.ndarray]
    probes: dict = field(repr=False)
    task: str = "classification"
    classes: np.ndarray | None = None
    train_idx: np.ndarray | None = field(default=None, repr=False)
    test_idx: np.ndarray | None = field(default=None, repr=False)


def _as_matrix_dict(activations) -> dict[str, np.ndarray]:
    if isinstance(activations, Activations):
        items = activations.acts.items()
    elif isinstance(activations, dict):
        items = activations.items()
    else:
        items = [("activations", activations)]
    out = {}
    for name, x in items:
        x = (
            x.detach().cpu().double().numpy()
            if isinstance(x, torch.Tensor)
            else np.asarray(x, dtype=np.float64)
        )
        if x.ndim != 2 or x.shape[0] < 2:
            raise InterpError(
                f"activations: {name!r} must be a 2-D array [n_examples >= 2, features]; "
                f"given shape {list(x.shape)}"
            )
        if not np.isfinite(x).all():
            raise InterpError(f"activations: {name!r} contains NaN or infinite values")
        out[name] = x
    if not out:
        raise InterpError("activations: expected at least one hook's activations; given none")
    return out


def _infer_task(y: np.ndarray, task: str) -> str:
    if task not in ("auto", "classification", "regression"):
        raise InterpError(f"task: must be 'auto', 'classification' or 'regression'; given {task!r}")
    if task != "auto":
        return task
    if y.dtype.kind == "f" and not np.all(np.equal(np.mod(y, 1), 0)):
        return "regression"
    return "classification"


def fit_probes(
    activations,
    labels,
    *,
    task: str = "auto",
    test_size: float = 0.25,
    seed: int = 0,
    C: float = 1.0,
    alpha: float = 1.0,
    max_iter: int = 2000,
) -> ProbeResult:
    """Fit one linear probe per hook and score it on a held-out split.

    Args:
        activations: :class:`Activations`, a dict ``hook -> [n, features]`` array/tensor, or one array.
        labels: ``[n]`` class labels (ints, bools, strings) or numbers.
        task: ``"classification"`` (LogisticRegression, metric accuracy), ``"regression"`` (Ridge,
            metric R²), or ``"auto"`` (regression for non-integer floats).
        test_size: held-out fraction in (0, 1); the split is stratified by class where possible and
            is the same for every hook.
        seed: seeds the split and the solver (deterministic).
        C, alpha: inverse L2 strength of the logistic regression / L2 strength of the ridge.
        max_iter: solver iterations for the logistic regression.

    Features are standardised inside each probe (so large-norm residuals do not stall the solver);
    the reported directions are mapped back to the raw activation basis, so they are the normals of
    the probe's decision boundary in the model's own coordinates.

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> y = rng.integers(0, 2, 200)
    >>> X = rng.normal(size=(200, 16)); X[:, 3] += 4 * (2 * y - 1)
    >>> r = fit_probes(X, y, seed=0)
    >>> bool(r.scores.test.iloc[0] > 0.95), int(np.argmax(np.abs(r.directions["activations"])))
    (True, 3)
    """
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    xs = _as_matrix_dict(activations)
    y = labels.detach().cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    if y.ndim != 1:
        raise InterpError(f"labels: expected one label per example, shape [n]; given shape {list(y.shape)}")
    n = len(y)
    for name, x in xs.items():
        if x.shape[0] != n:
            raise InterpError(f"labels: {n} labels for {x.shape[0]} examples of {name!r}; they must match")
    if not (isinstance(test_size, float) and 0.0 < test_size < 1.0):
        raise InterpError(f"test_size: must be a float in (0, 1); given {test_size!r}")
    task = _infer_task(y, task)

    idx = np.arange(n)
    classes = None
    stratify = None
    if task == "classification":
        classes, counts = np.unique(y, return_counts=True)
        if len(classes) < 2:
            raise InterpError(
                f"labels: classification needs at least 2 classes; given only {classes.tolist()}"
            )
        n_test = int(np.ceil(test_size * n))
        if counts.min() >= 2 and n_test >= len(classes) and n - n_test >= len(classes):
            stratify = y
    else:
        y = y.astype(np.float64)
    train_idx, test_idx = train_test_split(idx, test_size=test_size, random_state=seed, stratify=stratify)
    if task == "classification" and len(np.unique(y[train_idx])) < 2:
        raise InterpError("labels: the training split holds a single class; give more examples of each class")

    rows, directions, probes = [], {}, {}
    for name, x in xs.items():
        if task == "classification":
            est = LogisticRegression(C=C, max_iter=max_iter, random_state=seed)
        else:
            est = Ridge(alpha=alpha, random_state=seed)
        pipe = make_pipeline(StandardScaler(), est)
        pipe.fit(x[train_idx], y[train_idx])
        scaler, lin = pipe[0], pipe[-1]
        # decision = w_std . (x - mu) / sigma  =>  raw-basis normal is w_std / sigma
        coef = np.atleast_2d(lin.coef_) / scaler.scale_
        coef = coef / np.maximum(np.linalg.norm(coef, axis=-1, keepdims=True), 1e-12)
        directions[name] = coef[0] if coef.shape[0] == 1 else coef
        probes[name] = pipe
        if task == "classification":
            values, counts = np.unique(y[train_idx], return_counts=True)
            baseline = float(np.mean(y[test_idx] == values[np.argmax(counts)]))
            metric = "accuracy"
        else:
            resid = y[test_idx] - y[train_idx].mean()
            total = y[test_idx] - y[test_idx].mean()
            baseline = float(1.0 - (resid @ resid) / (total @ total)) if total @ total > 0 else float("nan")
            metric = "r2"
        rows.append(
            {
                "hook": name,
                "layer": hook_layer(name),
                "metric": metric,
                "train": float(pipe.score(x[train_idx], y[train_idx])),
                "test": float(pipe.score(x[test_idx], y[test_idx])),
                "baseline": baseline,
                "n_train": len(train_idx),
                "n_test": len(test_idx),
            }
        )
    scores = pd.DataFrame(rows)
    scores["layer"] = scores["layer"].astype("Int64")
    return ProbeResult(scores, directions, probes, task, classes, train_idx, test_idx)


# --- comparing a direction with the model's own directions ----------------------------------------
def _cosines(vectors: torch.Tensor, direction: torch.Tensor) -> torch.Tensor:
    """Cosine of each row of ``vectors [n, d]`` with ``direction [d]`` (0 for zero rows)."""
    norms = vectors.norm(dim=-1).clamp_min(1e-12)
    return (vectors @ direction) / (norms * direction.norm().clamp_min(1e-12))


_KINDS = ("W_in", "W_gate", "W_out", "W_E", "W_U")


@torch.no_grad()
def direction_matches(
    model, direction, *, k: int = 10, kinds=("W_in", "W_gate", "W_out", "W_E", "W_U"), layers=None
) -> pd.DataFrame:
    """The model directions most aligned with ``direction`` (a ``[d_model]`` vector), by cosine.

    Kinds: ``W_in`` (a neuron's input weights, a column of ``W_in[layer]``: what it reads),
    ``W_gate`` (gated MLPs only), ``W_out`` (a neuron's output row: what it writes), ``W_E`` (token
    embeddings) and ``W_U`` (unembedding columns: what a direction promotes). For each kind the ``k``
    largest ``|cosine|`` are returned, sorted by ``|cosine|``; the sign is kept in ``cosine``.

    Returns a DataFrame ``kind, layer (missing for W_E/W_U), index (neuron or token id), token, cosine``.

    >>> import torch
    >>> from interp.model.config import DecoderConfig
    >>> from interp.model.transformer import HookedDecoder
    >>> neox = dict(parallel_residual=True, positional="rotary", rotary_fraction=0.25)
    >>> model = HookedDecoder(DecoderConfig(d_vocab=50, n_ctx=16, d_model=32, n_layers=2, n_heads=4, **neox))
    >>> m = direction_matches(model, model.W_out[1, 7], k=2, kinds=["W_out"])
    >>> int(m.layer[0]), int(m["index"][0]), round(float(m.cosine[0]), 4)
    (1, 7, 1.0)
    """
    d_model, n_layers = int(model.cfg.d_model), int(model.cfg.n_layers)
    if isinstance(direction, np.ndarray) or not isinstance(direction, torch.Tensor):
        direction = torch.as_tensor(np.asarray(direction, dtype=np.float64))
    if direction.ndim != 1 or direction.shape[0] != d_model:
        raise InterpError(
            f"direction: expected a vector of length d_model={d_model} (a residual-stream direction); "
            f"given shape {list(direction.shape)}"
        )
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise InterpError(f"k: must be a positive integer; given {k!r}")
    if isinstance(kinds, str):
        kinds = [kinds]
    bad = [x for x in kinds if x not in _KINDS]
    if bad or not kinds:
        raise InterpError(f"kinds: each must be one of {list(_KINDS)}; given {list(kinds)}")
    layer_list = (
        list(range(n_layers))
        if layers is None
        else [
            check_index("layers", l, n_layers)
            for l in ([layers] if not isinstance(layers, (list, tuple, range)) else layers)
        ]
    )
    direction = direction.detach().double().cpu()

    def block_vectors(kind):  # -> list of (layer, [n_neurons, d_model])
        W = getattr(model, kind)
        if W is None:
            return []
        W = W.detach().double().cpu()
        # W_in / W_gate: [layer, d_model, d_mlp] (columns are neurons); W_out: [layer, d_mlp, d_model]
        return [(l, W[l].T if kind in ("W_in", "W_gate") else W[l]) for l in layer_list]

    frames = []
    for kind in kinds:
        if kind in ("W_E", "W_U"):
            W = model.W_E if kind == "W_E" else model.W_U.T
            groups = [(None, W.detach().double().cpu())]
        else:
            groups = block_vectors(kind)
        if not groups:
            continue
        cos = torch.cat([_cosines(v, direction) for _, v in groups])
        layer_of = np.concatenate([np.full(v.shape[0], -1 if l is None else l) for l, v in groups])
        index_of = np.concatenate([np.arange(v.shape[0]) for _, v in groups])
        top = torch.topk(cos.abs(), min(k, cos.numel())).indices.numpy()
        is_token = kind in ("W_E", "W_U")
        tokens = (
            [token_str(model, int(i)) for i in index_of[top]]
            if is_token
            else [""] * len(top)
        )
        frames.append(
            pd.DataFrame(
                {
                    "kind": kind,
                    "layer": pd.array([None if is_token else int(layer_of[i]) for i in top], dtype="Int64"),
                    "index": index_of[top].astype(np.int64),
                    "token": tokens,
                    "cosine": cos[top].numpy(),
                }
            )
        )
    if not frames:
        return pd.DataFrame(
            {"kind": [], "layer": pd.array([], dtype="Int64"), "index": [], "token": [], "cosine": []}
        )
    return pd.concat(frames, ignore_index=True)
