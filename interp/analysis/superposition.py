"""Superposition and near-orthogonality.

A d-dimensional residual stream has only d orthogonal directions, yet models appear to represent far more
features than that. The geometric reason is that in high dimension *almost* orthogonal is cheap: two random
unit vectors in R^100 are within 90°±1° of each other 13.8% of the time, in R^10000 92% of the time, and the
Johnson–Lindenstrauss picture says the number of directions with pairwise |cos| <= eps grows exponentially
in d. This module measures that picture four ways:

1. **Closed forms for random directions.** For independent uniform unit vectors u, v in R^d the cosine
   t = u·v has density (1-t²)^((d-3)/2) / B(1/2, (d-1)/2) on [-1, 1], i.e. t² ~ Beta(1/2, (d-1)/2); the
   angle θ has density sin^(d-2)(θ) / B(1/2, (d-1)/2) on [0, π]. Everything below (fractions, pdf, cdf,
   moments) is exact, through scipy's regularized incomplete beta function, with a seeded Monte-Carlo
   estimate beside it to check against.
2. **Johnson–Lindenstrauss counting**: :func:`jl_min_dim` (sklearn's bound) and its inverse
   :func:`jl_max_vectors`, plus :func:`welch_bound`, the hard floor on the worst |cos| of any N vectors.
3. **A model's own direction sets** (embedding rows, unembedding columns, neuron read/write vectors,
   per-head Q/K/V/O and OV/QK singular directions), each beside the random baseline of the same dimension.
4. **Constructions**: an optimiser that packs N unit vectors as near-perpendicular as it can (the 10 000
   vectors in 100 dimensions experiment) and the toy ReLU-output models of Elhage et al. (2022), "Toy Models
   of Superposition", with their per-feature dimensionality measures and a sparsity sweep.

All functions are pure: they return DataFrames or small dataclasses, seeded where random, and never print.

>>> round(near_orthogonal_fraction(100, tolerance_deg=1.0), 3)
0.138
>>> round(near_orthogonal_fraction(10_000, tolerance_deg=1.0), 3)
0.919
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from scipy import integrate, special

from interp.errors import InterpError

__all__ = [
    "DIRECTION_SETS",
    "PackingResult",
    "ToyModelResult",
    "available_direction_sets",
    "direction_angle_samples",
    "direction_set_stats",
    "jl_max_vectors",
    "jl_min_dim",
    "near_orthogonal_fraction",
    "pack_near_orthogonal",
    "random_angle_cdf",
    "random_angle_moments",
    "random_angle_pdf",
    "random_angle_stats",
    "random_cos_pdf",
    "sample_random_cosines",
    "sweep_toy_models",
    "train_toy_model",
    "welch_bound",
]


# ----------------------------------------------------------------------------------------------------------
# argument checks (messages name the argument, the allowed range and the value given)


def _int_arg(name: str, value, minimum: int, maximum: int | None = None) -> int:
    ok = not isinstance(value, bool) and isinstance(value, (int, np.integer))
    if ok:
        value = int(value)
        ok = value >= minimum and (maximum is None or value <= maximum)
    if not ok:
        allowed = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
        raise InterpError(f"{name} must be an integer {allowed}, got {value!r}")
    return value


def _float_arg(
    name: str, value, lo: float, hi: float, *, lo_open: bool = False, hi_open: bool = False
) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        v = float("nan")
    ok = math.isfinite(v) and (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi)
    if not ok:
        rng = f"{'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
        raise InterpError(f"{name} must be a number in {rng}, got {value!r}")
    return v


# ----------------------------------------------------------------------------------------------------------
# 1. exact distribution of the angle between two random unit vectors


def _log_norm(dim: int) -> float:
    # log B(1/2, (d-1)/2): the normaliser of both the cosine and the angle densities.
    return float(special.betaln(0.5, (dim - 1) / 2.0))


def near_orthogonal_fraction(dim: int, tolerance_deg: float = 1.0) -> float:
    """Exact probability that two independent uniform random unit vectors in R^dim make an angle in
    90° ± tolerance_deg.

    |cos θ| <= sin(tol) and cos²θ ~ Beta(1/2, (dim-1)/2), so the answer is the regularized incomplete beta
    I_{sin²(tol)}(1/2, (dim-1)/2). Special cases: dim=2 gives 2·tol/180, dim=3 gives sin(tol).

    >>> near_orthogonal_fraction(2, 1.0) == 2 * 1.0 / 180
    True
    >>> round(near_orthogonal_fraction(3, 30.0), 12)  # sin(30°)
    0.5
    >>> [round(near_orthogonal_fraction(d), 3) for d in (100, 1000, 10_000)]
    [0.138, 0.419, 0.919]
    """
    dim = _int_arg("dim", dim, 2)
    tol = _float_arg("tolerance_deg", tolerance_deg, 0.0, 90.0)
    if dim == 2:
        # Exact in floating point too: the angle is uniform on [0, π] in the plane.
        return 2.0 * tol / 180.0
    s = math.sin(math.radians(tol))
    return float(special.betainc(0.5, (dim - 1) / 2.0, s * s))


def random_cos_pdf(dim: int, cos) -> np.ndarray:
    """Exact density of t = u·v for independent uniform unit vectors in R^dim, at ``cos`` (array-like).

    >>> from scipy.integrate import quad
    >>> round(quad(lambda t: float(random_cos_pdf(10, t)), -1, 1)[0], 10)
    1.0
    >>> round(float(random_cos_pdf(3, 0.2)), 12)  # uniform on [-1, 1] in R^3
    0.5
    """
    dim = _int_arg("dim", dim, 2)
    t = np.asarray(cos, dtype=np.float64)
    inside = np.abs(t) < 1.0
    with np.errstate(divide="ignore", invalid="ignore"):
        log_p = (dim - 3) / 2.0 * np.log1p(-np.square(np.where(inside, t, 0.0))) - _log_norm(dim)
    return np.where(inside, np.exp(log_p), 0.0)


def random_angle_pdf(dim: int, angles_deg=None, n_points: int = 721) -> pd.DataFrame:
    """Exact pdf and cdf of the angle between two random unit vectors in R^dim.

    Returns columns ``angle_deg``, ``pdf_per_deg``, ``pdf_per_rad`` and ``cdf`` on ``angles_deg`` (default: an
    even grid of ``n_points`` over [0, 180]). The density is sin^(dim-2)(θ) / B(1/2, (dim-1)/2) per radian.

    >>> df = random_angle_pdf(100)
    >>> round(float(np.trapezoid(df.pdf_per_deg, df.angle_deg)), 6)
    1.0
    >>> round(float(df.cdf.iloc[360]), 12)  # half the mass lies below 90°
    0.5
    """
    dim = _int_arg("dim", dim, 2)
    if angles_deg is None:
        n_points = _int_arg("n_points", n_points, 2)
        angles_deg = np.linspace(0.0, 180.0, n_points)
    a = np.asarray(angles_deg, dtype=np.float64).reshape(-1)
    if a.size and (np.nanmin(a) < 0 or np.nanmax(a) > 180 or np.isnan(a).any()):
        raise InterpError(f"angles_deg must lie in [0, 180], got values from {a.min()} to {a.max()}")
    theta = np.radians(a)
    if dim == 2:
        per_rad = np.full_like(theta, 1.0 / math.pi)
    else:
        with np.errstate(divide="ignore"):
            per_rad = np.exp((dim - 2) * np.log(np.sin(theta).clip(min=0.0)) - _log_norm(dim))
    return pd.DataFrame(
        {
            "angle_deg": a,
            "pdf_per_deg": per_rad * (math.pi / 180.0),
            "pdf_per_rad": per_rad,
            "cdf": random_angle_cdf(dim, a),
        }
    )


def random_angle_cdf(dim: int, angle_deg) -> np.ndarray:
    """Exact P(angle <= angle_deg) for two random unit vectors in R^dim (array-like in, array out).

    >>> round(float(random_angle_cdf(3, 60.0)), 12)  # (1 - cos 60°) / 2
    0.25
    """
    dim = _int_arg("dim", dim, 2)
    a = np.radians(np.asarray(angle_deg, dtype=np.float64))
    c = np.cos(a)
    # P(t >= c) for c >= 0 is half the two-sided tail; by symmetry the rest follows.
    tail = 0.5 * special.betaincc(0.5, (dim - 1) / 2.0, np.clip(c * c, 0.0, 1.0))
    out = np.where(c >= 0, tail, 1.0 - tail)
    return np.clip(out, 0.0, 1.0)


def random_angle_moments(dim: int, tolerance_deg: float = 1.0) -> dict:
    """Exact summary statistics of the random-pair angle in R^dim.

    Returns a dict with ``mean_angle_deg`` (90 by symmetry), ``std_angle_deg`` (numerical quadrature of the
    exact density), ``mean_cos`` (0), ``std_cos`` (1/sqrt(dim)), ``mean_abs_cos``
    (2 / ((dim-1)·B(1/2, (dim-1)/2))) and ``frac_within_tol``.

    >>> m = random_angle_moments(3)
    >>> round(m["mean_abs_cos"], 12), round(m["std_cos"] ** 2, 12)
    (0.5, 0.333333333333)
    >>> round(random_angle_moments(2)["std_angle_deg"], 4)  # uniform on [0, 180]: 180/sqrt(12)
    51.9615
    """
    dim = _int_arg("dim", dim, 2)
    log_b = _log_norm(dim)
    mean_abs_cos = 2.0 * math.exp(-log_b) / (dim - 1)
    if dim == 2:
        var = (math.pi**2) / 12.0
    else:
        # Var(θ) = ∫ φ² cos^(d-2) φ dφ / B over φ = θ - π/2. The mass sits within a few 1/sqrt(d) of 0, so we
        # integrate only where the integrand is not underflowed; the cut-off loses < exp(-600) of the mass.
        hi = min(math.pi / 2, 35.0 / math.sqrt(dim - 2))

        def integrand(phi: float) -> float:
            c = math.cos(phi)
            return phi * phi * math.exp((dim - 2) * math.log(c) - log_b) if c > 0 else 0.0

        var = 2.0 * integrate.quad(integrand, 0.0, hi, limit=200, epsabs=0.0, epsrel=1e-12)[0]
    return {
        "dim": dim,
        "mean_angle_deg": 90.0,
        "std_angle_deg": math.degrees(math.sqrt(var)),
        "mean_cos": 0.0,
        "std_cos": 1.0 / math.sqrt(dim),
        "mean_abs_cos": mean_abs_cos,
        "frac_within_tol": near_orthogonal_fraction(dim, tolerance_deg),
    }


@functools.lru_cache(maxsize=256)
def _cached_moments(dim: int, tol: float) -> dict:
    # One quadrature per (dim, tol): a model's many per-layer/per-head groups share a dimension.
    return random_angle_moments(dim, tol)


def sample_random_cosines(dim: int, n_pairs: int, seed: int = 0) -> np.ndarray:
    """Monte-Carlo: cosines of ``n_pairs`` independent pairs of Gaussian (hence uniformly oriented) vectors.

    Vectors are really drawn in R^dim (chunked so memory stays ~32 MB), not from the closed form, so this
    is an independent check of it.

    >>> c = sample_random_cosines(50, 2000, seed=0)
    >>> c.shape, bool(abs(c.std() - 50 ** -0.5) < 0.01)
    ((2000,), True)
    """
    dim = _int_arg("dim", dim, 2)
    n_pairs = _int_arg("n_pairs", n_pairs, 0)
    rng = np.random.default_rng(seed)
    out = np.empty(n_pairs, dtype=np.float64)
    chunk = max(1, (1 << 21) // dim)
    for start in range(0, n_pairs, chunk):
        n = min(chunk, n_pairs - start)
        u = rng.standard_normal((n, dim))
        v = rng.standard_normal((n, dim))
        out[start : start + n] = np.einsum("ij,ij->i", u, v) / (
            np.linalg.norm(u, axis=1) * np.linalg.norm(v, axis=1)
        )
    return np.clip(out, -1.0, 1.0)


def random_angle_stats(
    dims: Sequence[int] = (2, 3, 10, 100, 1000, 10_000),
    tolerance_deg: float = 1.0,
    n_pairs: int = 4000,
    seed: int = 0,
) -> pd.DataFrame:
    """Angle statistics of random unit-vector pairs per dimension: exact values beside a seeded Monte-Carlo.

    One row per dim with ``exact_*`` and ``mc_*`` columns for the fraction within 90°±tol, mean and std of the
    angle, mean |cos| and std of cos, plus ``mc_frac_stderr`` (binomial standard error). ``n_pairs=0`` skips
    the Monte-Carlo (its columns are NaN).

    >>> df = random_angle_stats(dims=(3, 100), n_pairs=2000)
    >>> df[["dim", "exact_frac_within_tol"]].round(4).values.tolist()
    [[3.0, 0.0175], [100.0, 0.1375]]
    >>> bool((abs(df.mc_frac_within_tol - df.exact_frac_within_tol) < 4 * df.mc_frac_stderr + 1e-3).all())
    True
    """
    tol = _float_arg("tolerance_deg", tolerance_deg, 0.0, 90.0)
    n_pairs = _int_arg("n_pairs", n_pairs, 0)
    rows = []
    for k, d in enumerate(dims):
        d = _int_arg("dims[]", d, 2)
        ex = random_angle_moments(d, tol)
        row = {"dim": d, "tolerance_deg": tol, "n_pairs": n_pairs}
        for key in ("frac_within_tol", "mean_angle_deg", "std_angle_deg", "mean_abs_cos", "std_cos"):
            row[f"exact_{key}"] = ex[key]
        if n_pairs:
            c = sample_random_cosines(d, n_pairs, seed=seed + k)
            ang = np.degrees(np.arccos(c))
            p = float(np.mean(np.abs(ang - 90.0) <= tol))
            row.update(
                mc_frac_within_tol=p,
                mc_frac_stderr=math.sqrt(max(p * (1 - p), 1.0 / n_pairs) / n_pairs),
                mc_mean_angle_deg=float(ang.mean()),
                mc_std_angle_deg=float(ang.std(ddof=1)) if n_pairs > 1 else float("nan"),
                mc_mean_abs_cos=float(np.abs(c).mean()),
                mc_std_cos=float(c.std(ddof=1)) if n_pairs > 1 else float("nan"),
            )
        rows.append(row)
    cols = ["dim", "tolerance_deg", "n_pairs"]
    for key in ("frac_within_tol", "mean_angle_deg", "std_angle_deg", "mean_abs_cos", "std_cos"):
        cols += [f"exact_{key}", f"mc_{key}"]
    cols.insert(5, "mc_frac_stderr")
    return pd.DataFrame(rows).reindex(columns=cols)


# ----------------------------------------------------------------------------------------------------------
# 2. Johnson–Lindenstrauss counting and the Welch bound


def _jl_denominator(eps: float) -> float:
    return eps * eps / 2.0 - eps**3 / 3.0


def jl_min_dim(n_vectors: int, eps: float) -> int:
    """Johnson–Lindenstrauss: dimensions that suffice for a random projection of ``n_vectors`` points to keep
    every squared pairwise distance within (1 ± eps): floor(4 ln n / (eps²/2 - eps³/3)).

    This is exactly ``sklearn.random_projection.johnson_lindenstrauss_min_dim`` (Dasgupta & Gupta's bound,
    floored as sklearn does).

    >>> jl_min_dim(1_000_000, 0.5)
    663
    >>> jl_min_dim(10_000, 0.1)
    7894
    """
    n = _int_arg("n_vectors", n_vectors, 1)
    eps = _float_arg("eps", eps, 0.0, 1.0, lo_open=True, hi_open=True)
    return math.floor(4.0 * math.log(n) / _jl_denominator(eps))


def _chernoff_log_tail(dim: int, eps: float) -> float:
    # log of an upper bound on P(|u·v| > eps): 2·exp(-dim·eps²/2) (concentration of measure on the sphere).
    return math.log(2.0) - dim * eps * eps / 2.0


def jl_max_vectors(dim: int, eps: float, method: str = "jl") -> int:
    """How many directions fit in R^dim with pairwise |cos| <= eps (a guaranteed-achievable count, not a cap).

    ``method="jl"`` inverts :func:`jl_min_dim`'s unfloored bound: floor(exp(dim·(eps²/2 - eps³/3)/4)), the
    largest n with 4 ln n / (eps²/2 - eps³/3) <= dim. It answers the JL question (n points projected to dim
    dimensions keep distances within 1±eps), which is the usual back-of-envelope for "features that fit".

    ``method="random"`` is the probabilistic-method count for the cosine question itself: the largest N with
    C(N, 2)·P(|u·v| > eps) < 1, where the tail probability is exact (regularized incomplete beta). With fewer
    than one expected bad pair among N random unit vectors, some set of N vectors has every |cos| <= eps.
    It is usually much larger than the JL count, which carries loose constants.

    Both grow like exp(c·dim·eps²): the exponential capacity behind superposition.

    >>> jl_max_vectors(100, 0.5)
    8
    >>> jl_max_vectors(100, 0.5, method="random")
    4434
    >>> jl_min_dim(jl_max_vectors(1000, 0.2), 0.2) <= 1000
    True
    """
    dim = _int_arg("dim", dim, 1)
    eps = _float_arg("eps", eps, 0.0, 1.0, lo_open=True, hi_open=True)
    if method == "jl":
        log_n = dim * _jl_denominator(eps) / 4.0
        n = math.floor(math.exp(log_n)) if log_n < 700 else None
        # exp() can round up past the exact boundary; step back until the bound genuinely holds.
        while n is not None and n > 1 and 4.0 * math.log(n) / _jl_denominator(eps) > dim:
            n -= 1
    elif method == "random":
        if dim == 1:
            return 1  # two unit vectors on a line are parallel
        p_tail = float(special.betaincc(0.5, (dim - 1) / 2.0, eps * eps))
        log_p = math.log(p_tail) if p_tail > 0 else _chernoff_log_tail(dim, eps)
        # N(N-1)/2 · p < 1  <=>  N < (1 + sqrt(1 + 8/p)) / 2
        log_8_over_p = math.log(8.0) - log_p
        if log_8_over_p < 1400:
            bound = (1.0 + math.sqrt(1.0 + math.exp(log_8_over_p))) / 2.0
            n = math.ceil(bound) - 1
        else:
            n = None
    else:
        raise InterpError(f"method must be one of 'jl', 'random', got {method!r}")
    if n is None:
        raise InterpError(
            f"jl_max_vectors(dim={dim}, eps={eps}) exceeds what a float can represent; use smaller dim or eps"
        )
    return int(max(n, 1))


def welch_bound(n_vectors: int, dim: int) -> float:
    """Welch's lower bound on the worst |cos| of any ``n_vectors`` unit vectors in R^dim:
    max_{i≠j} |cos| >= sqrt((N - d) / (d (N - 1))) (0 when N <= d). Equality holds for equiangular tight
    frames, e.g. the regular simplex (N = d + 1 vectors with cos = -1/d).

    >>> round(welch_bound(10_000, 100), 4)  # no packing of 10 000 vectors in R^100 beats ~84.3°..95.7°
    0.0995
    >>> welch_bound(4, 3) == 1 / 3
    True
    """
    n = _int_arg("n_vectors", n_vectors, 1)
    d = _int_arg("dim", dim, 1)
    if n <= d:
        return 0.0
    return math.sqrt((n - d) / (d * (n - 1)))


# ----------------------------------------------------------------------------------------------------------
# 3. a model's own direction sets


DIRECTION_SETS = {
    "W_E": "embedding rows W_E[token, :]",
    "W_U": "unembedding columns W_U[:, token]",
    "W_pos": "learned positional rows W_pos[pos, :]",
    "W_in": "neuron input (read) vectors W_in[l][:, n], per layer",
    "W_gate": "gate read vectors W_gate[l][:, n] (gated MLPs), per layer",
    "W_out": "neuron output (write) vectors W_out[l][n, :], per layer",
    "W_Q": "query read vectors W_Q[l, h][:, i], per layer and head",
    "W_K": "key read vectors W_K[l, kv][:, i], per layer and kv head",
    "W_V": "value read vectors W_V[l, kv][:, i], per layer and kv head",
    "W_O": "head write vectors W_O[l, h][i, :], per layer and head",
    "OV": "right singular (write) directions of each head's W_V[kv(h)] W_O[h]; per layer, cross-head pairs",
    "QK": "left singular (query-read) directions of each head's W_Q[h] W_K[kv(h)]^T; per layer, cross-head pairs",
}


@dataclass
class _Group:
    """One set of directions to compare: ``vectors[count, dim]``; when ``owner`` is given, only pairs with
    different owners count (SVD directions of one head are exactly orthogonal by construction)."""

    set: str
    layer: int | None
    head: int | None
    vectors: torch.Tensor
    owner: torch.Tensor | None = None


def _weight(model, name: str) -> torch.Tensor:
    why = "None or missing"
    try:
        w = getattr(model, name)
    except (AttributeError, NotImplementedError, KeyError, ValueError) as e:  # InterpError is a ValueError
        w, why = None, str(e) or why
    if w is None:
        raise InterpError(f"sets contains {name!r} but the model has no {name} weight ({why})")
    if not isinstance(w, torch.Tensor):
        w = torch.as_tensor(np.asarray(w))
    return w.detach()


def _low_rank_svd(a: torch.Tensor, b: torch.Tensor):
    """SVD of the rank-k product a @ b (a [d, k], b [k, d]) without forming the d×d matrix."""
    a = a.to(torch.float64)
    b = b.to(torch.float64)
    qa, ra = torch.linalg.qr(a)
    qb, rb = torch.linalg.qr(b.T)
    u, s, vh = torch.linalg.svd(ra @ rb.T)
    return qa @ u, s, vh @ qb.T  # U [d, k], S [k], Vh [k, d]


def _direction_groups(model, set_name: str, k_singular: int | None) -> list[_Group]:
    if set_name not in DIRECTION_SETS:
        raise InterpError(f"sets entries must be among {sorted(DIRECTION_SETS)}, got {set_name!r}")
    if set_name == "W_E" or set_name == "W_pos":
        return [_Group(set_name, None, None, _weight(model, set_name))]
    if set_name == "W_U":
        return [_Group(set_name, None, None, _weight(model, "W_U").T)]
    if set_name in ("W_in", "W_gate"):
        w = _weight(model, set_name)  # [layers, d_model, d_mlp]
        return [_Group(set_name, l, None, w[l].T) for l in range(w.shape[0])]
    if set_name == "W_out":
        w = _weight(model, "W_out")  # [layers, d_mlp, d_model]
        return [_Group(set_name, l, None, w[l]) for l in range(w.shape[0])]
    if set_name in ("W_Q", "W_K", "W_V"):
        w = _weight(model, set_name)  # [layers, heads, d_model, d_head]
        return [_Group(set_name, l, h, w[l, h].T) for l in range(w.shape[0]) for h in range(w.shape[1])]
    if set_name == "W_O":
        w = _weight(model, "W_O")  # [layers, heads, d_head, d_model]
        return [_Group(set_name, l, h, w[l, h]) for l in range(w.shape[0]) for h in range(w.shape[1])]
    # OV / QK: per-head low-rank circuits; map query head h to kv head h // (n_heads // n_kv_heads).
    w_q, w_k = _weight(model, "W_Q"), _weight(model, "W_K")
    n_layers, n_heads, _, d_head = w_q.shape
    n_kv = w_k.shape[1]
    if n_kv < 1 or n_heads % n_kv:
        raise InterpError(f"n_heads ({n_heads}) must be a multiple of n_kv_heads ({n_kv})")
    group = n_heads // n_kv
    k = d_head if k_singular is None else _int_arg("k_singular", k_singular, 1, d_head)
    other = _weight(model, "W_V") if set_name == "OV" else w_k
    w_o = _weight(model, "W_O") if set_name == "OV" else None
    groups = []
    for l in range(n_layers):
        dirs, owners = [], []
        for h in range(n_heads):
            kv = h // group
            if set_name == "OV":
                _, _, vh = _low_rank_svd(other[l, kv], w_o[l, h])  # write directions: rows of Vh
                d = vh[:k]
            else:
                u, _, _ = _low_rank_svd(w_q[l, h], other[l, kv].T)  # query-read directions: columns of U
                d = u[:, :k].T
            dirs.append(d)
            owners.append(torch.full((d.shape[0],), h, dtype=torch.long))
        groups.append(_Group(set_name, l, None, torch.cat(dirs), torch.cat(owners)))
    return groups


def _pairs(n: int, owner: torch.Tensor | None, max_pairs: int, gen: torch.Generator):
    """All pairs i<j (exact=True) when they fit in ``max_pairs``, else ``max_pairs`` uniform random pairs with
    i != j (and different owners when ``owner`` is given), drawn with replacement."""
    total = n * (n - 1) // 2
    if owner is not None:
        _, counts = torch.unique(owner, return_counts=True)
        total -= int((counts * (counts - 1) // 2).sum())
    if total <= 0:
        return torch.empty(0, dtype=torch.long), torch.empty(0, dtype=torch.long), True
    if total <= max_pairs:
        i, j = torch.triu_indices(n, n, offset=1)
        if owner is not None:
            keep = owner[i] != owner[j]
            i, j = i[keep], j[keep]
        return i, j, True
    i_parts, j_parts, got = [], [], 0
    while got < max_pairs:
        m = int((max_pairs - got) * 1.3) + 16
        i = torch.randint(0, n, (m,), generator=gen)
        j = torch.randint(0, n, (m,), generator=gen)
        keep = i != j if owner is None else owner[i] != owner[j]
        i_parts.append(i[keep])
        j_parts.append(j[keep])
        got += int(keep.sum())
    return torch.cat(i_parts)[:max_pairs], torch.cat(j_parts)[:max_pairs], False


# Below this size a group is copied once into contiguous float64 (fast gathers); above it, e.g. a 150k×4096
# vocabulary, rows are converted chunk by chunk from the stored tensor instead.
_MAX_FLOAT64_COPY_BYTES = 1 << 29


def _group_cosines(g: _Group, max_pairs: int, gen: torch.Generator, center: bool, chunk: int = 4096):
    """Cosines of the group's pairs (float64 numpy), skipping zero vectors."""
    v = g.vectors
    n, dim = v.shape
    small = n * dim * 8 <= _MAX_FLOAT64_COPY_BYTES
    if small:
        # One contiguous float64 copy: column sets (W_U, W_in, ...) arrive as transposed views, and gathering
        # rows of those is a strided walk many times slower than the copy.
        v = v.to("cpu", torch.float64).contiguous()
    mean = None
    if center:
        mean = torch.zeros(dim, dtype=torch.float64)
        for s in range(0, n, chunk):
            mean += v[s : s + chunk].to("cpu", torch.float64).sum(0)
        mean /= max(n, 1)
        if small:
            v -= mean
            mean = None
    norms = torch.empty(n, dtype=torch.float64)
    for s in range(0, n, chunk):
        x = v[s : s + chunk].to("cpu", torch.float64)
        norms[s : s + chunk] = (x - mean if mean is not None else x).norm(dim=1)
    # A vector with (numerically) zero norm has no direction; count it and leave it out.
    nonzero = norms > 1e-12 * max(float(norms.max()) if n else 0.0, 1e-300)
    idx = torch.nonzero(nonzero).flatten()
    owner = g.owner[idx] if g.owner is not None else None
    i, j, exact = _pairs(idx.numel(), owner, max_pairs, gen)
    i, j = idx[i], idx[j]
    if small:
        v /= torch.where(nonzero, norms, 1.0)[:, None]
    cos = torch.empty(i.numel(), dtype=torch.float64)
    for s in range(0, i.numel(), chunk):
        ii, jj = i[s : s + chunk], j[s : s + chunk]
        if small:
            cos[s : s + chunk] = torch.linalg.vecdot(v.index_select(0, ii), v.index_select(0, jj))
            continue
        a = v.index_select(0, ii.to(v.device)).to("cpu", torch.float64)
        b = v.index_select(0, jj.to(v.device)).to("cpu", torch.float64)
        if mean is not None:
            a, b = a - mean, b - mean
        cos[s : s + chunk] = torch.linalg.vecdot(a, b) / (norms[ii] * norms[jj])
    return cos.clamp(-1.0, 1.0).numpy(), int(idx.numel()), int(n - idx.numel()), exact


def _random_baseline_cosines(g_count: int, dim: int, owner, n_pairs: int, exact: bool, gen: torch.Generator):
    """Cosines of a random set with the same count and dimension, paired the same way: an actual Gaussian set
    when all pairs were used, otherwise independent pairs drawn from the exact distribution
    (t = ±sqrt(Beta(1/2, (d-1)/2)))."""
    if n_pairs == 0:
        return np.empty(0)
    if exact:
        x = torch.randn(g_count, dim, generator=gen, dtype=torch.float64)
        x = x / x.norm(dim=1, keepdim=True)
        i, j, _ = _pairs(g_count, owner, n_pairs + 1, gen)
        return (x[i] * x[j]).sum(1).clamp(-1, 1).numpy()
    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=gen))
    rng = np.random.default_rng(seed)
    mag = np.sqrt(rng.beta(0.5, (dim - 1) / 2.0, size=n_pairs)) if dim > 1 else np.ones(n_pairs)
    return mag * rng.choice([-1.0, 1.0], size=n_pairs)


def _summarise(cos: np.ndarray, tol: float) -> dict:
    if cos.size == 0:
        nan = float("nan")
        return {
            "mean_cos": nan,
            "std_cos": nan,
            "mean_abs_cos": nan,
            "max_abs_cos": nan,
            "frac_within_tol": nan,
            "mean_angle_deg": nan,
            "std_angle_deg": nan,
        }
    ang = np.degrees(np.arccos(cos))
    return {
        "mean_cos": float(cos.mean()),
        "std_cos": float(np.sqrt(np.mean(cos * cos))),  # RMS about 0: the random baseline is 1/sqrt(d)
        "mean_abs_cos": float(np.abs(cos).mean()),
        "max_abs_cos": float(np.abs(cos).max()),
        "frac_within_tol": float(np.mean(np.abs(ang - 90.0) <= tol)),
        "mean_angle_deg": float(ang.mean()),
        "std_angle_deg": float(ang.std()),
    }


def available_direction_sets(model) -> list[str]:
    """The names from :data:`DIRECTION_SETS` this model has weights for (e.g. no ``W_pos`` under rotary, no
    ``W_gate`` without a gated MLP), in :data:`DIRECTION_SETS` order.

    >>> import torch
    >>> from types import SimpleNamespace
    >>> available_direction_sets(SimpleNamespace(W_E=torch.zeros(5, 4), W_U=torch.zeros(4, 5), W_pos=None))
    ['W_E', 'W_U']
    """
    needs = {"OV": ("W_V", "W_O"), "QK": ("W_Q", "W_K")}
    out = []
    for name in DIRECTION_SETS:
        try:
            for w in needs.get(name, (name,)):
                _weight(model, w)
        except InterpError:
            continue
        out.append(name)
    return out


def _groups_for(model, sets, layers, k_singular) -> list[_Group]:
    if isinstance(sets, str):
        sets = (sets,)
    groups = [g for s in sets for g in _direction_groups(model, s, k_singular)]
    if layers is not None:
        wanted = {layers} if isinstance(layers, (int, np.integer)) else set(layers)
        groups = [g for g in groups if g.layer is None or g.layer in wanted]
    return groups


def direction_set_stats(
    model,
    sets: Sequence[str] = ("W_E", "W_U", "W_in", "W_out"),
    max_pairs: int = 100_000,
    seed: int = 0,
    tolerance_deg: float = 1.0,
    layers: int | Sequence[int] | None = None,
    center: bool = False,
    k_singular: int | None = None,
) -> pd.DataFrame:
    """Pairwise-angle statistics of a model's direction sets, each beside the random baseline of the same
    dimension and count.

    ``sets`` are names from :data:`DIRECTION_SETS` (TransformerLens weight names, plus ``"OV"``/``"QK"``:
    each head's singular directions, comparing only pairs from different heads). A set with at most
    ``max_pairs`` pairs is measured exactly over all pairs (``exact=True``), a larger one on ``max_pairs``
    seeded random pairs. ``center=True`` subtracts the set's mean vector first (removes a shared offset,
    such as the common direction of trained embeddings). Zero vectors are skipped and counted in ``n_zero``.

    Columns: ``set, layer, head, count, n_zero, dim, n_pairs, exact, mean_cos, std_cos`` (RMS cos),
    ``mean_abs_cos, max_abs_cos, frac_within_tol, mean_angle_deg, std_angle_deg``, and ``baseline_*`` for the
    same quantities from random unit vectors: exact closed forms for the distribution-level columns, and a
    seeded random set of the same count and dim (paired the same way) for ``baseline_max_abs_cos``.

    >>> import torch
    >>> from types import SimpleNamespace
    >>> g = torch.Generator().manual_seed(0)
    >>> m = SimpleNamespace(W_E=torch.randn(200, 64, generator=g), W_U=torch.randn(64, 200, generator=g))
    >>> df = direction_set_stats(m, sets=("W_E", "W_U"), max_pairs=5000)
    >>> df[["set", "count", "dim", "n_pairs", "exact"]].values.tolist()
    [['W_E', 200, 64, 5000, False], ['W_U', 200, 64, 5000, False]]
    >>> bool((abs(df.mean_abs_cos - df.baseline_mean_abs_cos) < 0.01).all())
    True
    """
    max_pairs = _int_arg("max_pairs", max_pairs, 1)
    tol = _float_arg("tolerance_deg", tolerance_deg, 0.0, 90.0)
    gen = torch.Generator().manual_seed(int(seed))
    rows = []
    for g in _groups_for(model, sets, layers, k_singular):
        cos, count, n_zero, exact = _group_cosines(g, max_pairs, gen, center)
        dim = int(g.vectors.shape[1])
        row = {
            "set": g.set,
            "layer": g.layer,
            "head": g.head,
            "count": count,
            "n_zero": n_zero,
            "dim": dim,
            "n_pairs": int(cos.size),
            "exact": exact,
            "tolerance_deg": tol,
        }
        row.update(_summarise(cos, tol))
        if dim >= 2:
            ex = _cached_moments(dim, tol)
            owner = None
            if g.owner is not None:
                owner = g.owner[:count] if n_zero == 0 else None
            base = _random_baseline_cosines(count, dim, owner, int(cos.size), exact, gen)
            row.update(
                baseline_mean_cos=0.0,
                baseline_std_cos=ex["std_cos"],
                baseline_mean_abs_cos=ex["mean_abs_cos"],
                baseline_max_abs_cos=float(np.abs(base).max()) if base.size else float("nan"),
                baseline_frac_within_tol=ex["frac_within_tol"],
                baseline_mean_angle_deg=90.0,
                baseline_std_angle_deg=ex["std_angle_deg"],
            )
        rows.append(row)
    df = pd.DataFrame(rows)
    for c in ("layer", "head"):
        if c in df:
            df[c] = df[c].astype("Int64")
    return df


def direction_angle_samples(
    model,
    sets: str | Sequence[str] = "W_E",
    max_pairs: int = 20_000,
    seed: int = 0,
    layers: int | Sequence[int] | None = None,
    center: bool = False,
    k_singular: int | None = None,
    include_baseline: bool = True,
) -> pd.DataFrame:
    """Raw pairwise cosines and angles of a model's direction sets, for histograms.

    Long format: ``source`` ("model" or "random"), ``set, layer, head, cos, angle_deg``. The "random" rows
    are the same number of pairs from random unit vectors of the same dimension (see
    :func:`direction_set_stats`), so the two histograms overlay directly; :func:`random_angle_pdf` gives the
    exact curve.

    >>> import torch
    >>> from types import SimpleNamespace
    >>> m = SimpleNamespace(W_E=torch.randn(30, 16, generator=torch.Generator().manual_seed(0)))
    >>> df = direction_angle_samples(m, "W_E")
    >>> df.groupby("source").size().to_dict()
    {'model': 435, 'random': 435}
    """
    max_pairs = _int_arg("max_pairs", max_pairs, 1)
    gen = torch.Generator().manual_seed(int(seed))
    frames = []
    for g in _groups_for(model, sets, layers, k_singular):
        cos, count, n_zero, exact = _group_cosines(g, max_pairs, gen, center)
        parts = [("model", cos)]
        if include_baseline and g.vectors.shape[1] >= 2:
            owner = g.owner if (g.owner is not None and n_zero == 0) else None
            parts.append(
                (
                    "random",
                    _random_baseline_cosines(count, int(g.vectors.shape[1]), owner, cos.size, exact, gen),
                )
            )
        for source, c in parts:
            frames.append(
                pd.DataFrame(
                    {
                        "source": source,
                        "set": g.set,
                        "layer": g.layer,
                        "head": g.head,
                        "cos": c,
                        "angle_deg": np.degrees(np.arccos(np.clip(c, -1, 1))),
                    }
                )
            )
    if not frames:
        return pd.DataFrame(columns=["source", "set", "layer", "head", "cos", "angle_deg"])
    df = pd.concat(frames, ignore_index=True)
    for c in ("layer", "head"):
        df[c] = df[c].astype("Int64")
    return df


# ----------------------------------------------------------------------------------------------------------
# 4a. packing N unit vectors as near-perpendicular as possible


@dataclass
class PackingResult:
    """Output of :func:`pack_near_orthogonal`.

    ``before`` / ``after``: exact angle histograms over all N(N-1)/2 pairs (columns ``angle_lo_deg,
    angle_hi_deg, count, fraction``); ``history``: per-step ``step, loss, max_abs_cos, mean_abs_cos``;
    ``vectors``: the packed unit vectors [N, dim] (float32).
    """

    n_vectors: int
    dim: int
    margin: float
    welch_bound: float
    max_abs_cos_before: float
    mean_abs_cos_before: float
    max_abs_cos_after: float
    mean_abs_cos_after: float
    before: pd.DataFrame
    after: pd.DataFrame
    history: pd.DataFrame
    vectors: np.ndarray = field(repr=False)

    @property
    def min_angle_deg_after(self) -> float:
        """Smallest deviation from 90° is 90 - this; the worst pair's angle is arccos(max |cos|)."""
        return math.degrees(math.acos(min(1.0, self.max_abs_cos_after)))


def _gram_pass(u: torch.Tensor, margin: float, power: float, chunk: int, want_grad: bool, hist_bins: int = 0):
    """One chunked pass over the Gram matrix U Uᵀ (never held whole: 10 000² floats would be 400 MB).

    Returns (loss, grad wrt U or None, max |cos|, mean |cos|, histogram counts or None). The loss is the mean
    over pairs i<j of relu(|cos| - margin)^power; its gradient is computed in closed form,
    dL/du_r = Σ_{j≠r} φ'(c_rj) u_j / n_pairs, so no autograd graph spans the chunks.
    """
    n = u.shape[0]
    n_pairs = n * (n - 1) / 2
    loss = 0.0
    abs_sum = 0.0
    max_abs = 0.0
    grad = torch.empty_like(u) if want_grad else None
    hist = torch.zeros(hist_bins, dtype=torch.float64) if hist_bins else None
    for s in range(0, n, chunk):
        e = min(n, s + chunk)
        c = u[s:e] @ u.T  # [chunk, n]
        rows = torch.arange(e - s, device=u.device)
        c[rows, rows + s] = 0.0  # drop self-pairs (cos 1) from every statistic and from the gradient
        a = c.abs()
        max_abs = max(max_abs, float(a.max()))
        abs_sum += float(a.sum())
        # Signed excess relu(|c| - m)·sign(c) = c - clamp(c, -m, m): one pass instead of abs/sub/relu/sign.
        ex = torch.sub(c, c.clamp(-margin, margin), out=a)
        # d = φ'(c)/power = ex·|ex|^(power-2); then Σφ = Σ ex·d. Integer powers avoid the slow generic pow.
        if power == 2.0:
            d = ex
        elif power == 4.0:
            d = ex * ex
            d.mul_(ex)
        else:
            d = ex.abs().pow_(power - 2.0).mul_(ex)
        loss += float(torch.dot(ex.flatten(), d.flatten()))
        if want_grad:
            grad[s:e] = (d @ u).mul_(power)
        if hist is not None:
            ang = torch.rad2deg(torch.arccos(c.clamp_(-1.0, 1.0)))
            ang[rows, rows + s] = float("nan")  # histc ignores NaN: self-pairs stay out of the histogram
            hist += torch.histc(ang, bins=hist_bins, min=0.0, max=180.0).to("cpu", torch.float64)
    # Each unordered pair was visited twice (as (i, j) and (j, i)).
    loss /= 2 * n_pairs
    if want_grad:
        grad /= n_pairs
    if hist is not None:
        hist /= 2
    return loss, grad, max_abs, abs_sum / (2 * n_pairs), hist


def _hist_frame(hist: torch.Tensor, bins: int) -> pd.DataFrame:
    edges = np.linspace(0.0, 180.0, bins + 1)
    counts = hist.round().numpy().astype(np.int64)
    return pd.DataFrame(
        {
            "angle_lo_deg": edges[:-1],
            "angle_hi_deg": edges[1:],
            "count": counts,
            "fraction": counts / max(int(counts.sum()), 1),
        }
    )


def pack_near_orthogonal(
    n_vectors: int = 1000,
    dim: int = 100,
    steps: int = 200,
    lr: float = 0.03,
    margin: float | None = None,
    power: float = 4.0,
    seed: int = 0,
    chunk_size: int = 128,
    n_bins: int = 360,
    device: str | torch.device = "cpu",
) -> PackingResult:
    """Pack ``n_vectors`` unit vectors in R^dim as near-perpendicular as gradient descent can.

    Starts from seeded random Gaussian directions and runs Adam on the sphere (Riemannian gradient, then
    renormalise) minimising the mean over pairs of relu(|cos| - margin)^power. ``margin`` defaults to the
    :func:`welch_bound`, below which no packing can push every pair, so only pairs worse than the ideal
    are penalised. ``power=4`` (default) leans hardest on the worst pairs and gives the lowest max |cos| for
    large N; ``power=2`` keeps a gradient right down to the margin and lands exactly on structured optima
    (the regular simplex for N = dim + 1, an orthonormal set for N <= dim). Each step is one chunked pass over the Gram matrix (O(N²·dim) flops, O(chunk·N) memory):
    N=10 000, dim=100 takes about 2 s per step on one busy CPU core (a 100-step run: minutes), far less on a GPU.

    >>> r = pack_near_orthogonal(200, 20, steps=60, seed=0)
    >>> r.max_abs_cos_after < r.max_abs_cos_before, r.welch_bound <= r.max_abs_cos_after
    (True, True)
    >>> int(r.after["count"].sum()) == 200 * 199 // 2
    True
    """
    n = _int_arg("n_vectors", n_vectors, 2)
    dim = _int_arg("dim", dim, 1)
    steps = _int_arg("steps", steps, 0)
    lr = _float_arg("lr", lr, 0.0, float("inf"), lo_open=True, hi_open=True)
    power = _float_arg("power", power, 1.0, 16.0)
    chunk = _int_arg("chunk_size", chunk_size, 1)
    bins = _int_arg("n_bins", n_bins, 1)
    wb = welch_bound(n, dim)
    margin = wb if margin is None else _float_arg("margin", margin, 0.0, 1.0)

    gen = torch.Generator().manual_seed(int(seed))
    v = torch.randn(n, dim, generator=gen, dtype=torch.float32).to(device)
    v = v / v.norm(dim=1, keepdim=True)
    v.requires_grad_(True)
    opt = torch.optim.Adam([v], lr=lr)

    _, _, max_before, mean_before, hist_before = _gram_pass(v.detach(), margin, power, chunk, False, bins)
    history = []
    with torch.no_grad():
        for step in range(steps):
            u = v.detach()
            loss, g, max_abs, mean_abs, _ = _gram_pass(u, margin, power, chunk, True)
            history.append((step, loss, max_abs, mean_abs))
            # Tangent-space gradient: the radial part would only change norms, which we reset anyway.
            g -= (g * u).sum(1, keepdim=True) * u
            v.grad = g
            # Cosine decay to 10% of lr: large early steps untangle, small late steps settle the worst pairs.
            for group in opt.param_groups:
                group["lr"] = lr * (0.1 + 0.45 * (1.0 + math.cos(math.pi * step / max(steps, 1))))
            opt.step()
            v.div_(v.norm(dim=1, keepdim=True))
    u = v.detach()
    loss, _, max_after, mean_after, hist_after = _gram_pass(u, margin, power, chunk, False, bins)
    history.append((steps, loss, max_after, mean_after))
    return PackingResult(
        n_vectors=n,
        dim=dim,
        margin=float(margin),
        welch_bound=wb,
        max_abs_cos_before=max_before,
        mean_abs_cos_before=mean_before,
        max_abs_cos_after=max_after,
        mean_abs_cos_after=mean_after,
        before=_hist_frame(hist_before.cpu(), bins),
        after=_hist_frame(hist_after.cpu(), bins),
        history=pd.DataFrame(history, columns=["step", "loss", "max_abs_cos", "mean_abs_cos"]),
        vectors=u.cpu().numpy(),
    )


# ----------------------------------------------------------------------------------------------------------
# 4b. toy models of superposition (Elhage et al. 2022)


@dataclass
class ToyModelResult:
    """A trained toy ReLU-output model x' = ReLU(WᵀW x + b) and its superposition measures.

    ``W`` [d_hidden, n_features] and ``b`` [n_features] (numpy float64). Per feature i (columns W_i):
    ``feature_norms`` ‖W_i‖; ``interference`` Σ_{j≠i} (Ŵ_i·W_j)² (how much other features leak into i's
    direction, the paper's "superposition" colour); ``dimensionality`` D_i = ‖W_i‖² / Σ_j (Ŵ_i·W_j)² (the
    fraction of a dimension feature i gets: 1 alone, 1/2 in an antipodal pair, 0 if unrepresented).
    ``dimensions_per_feature`` = d_hidden / ‖W‖²_F. ``features`` collects the per-feature numbers as a
    DataFrame; ``history`` has ``step, loss``.
    """

    n_features: int
    d_hidden: int
    feature_probability: float
    importance: np.ndarray
    W: np.ndarray
    b: np.ndarray
    feature_norms: np.ndarray
    interference: np.ndarray
    dimensionality: np.ndarray
    dimensions_per_feature: float
    final_loss: float
    history: pd.DataFrame
    features: pd.DataFrame

    @property
    def n_represented(self) -> int:
        """Features with ‖W_i‖ > 0.5: the ones the model actually stores."""
        return int((self.feature_norms > 0.5).sum())


def _importance_vector(name: str, importance, n: int) -> np.ndarray:
    if importance is None:
        return np.ones(n)
    if np.isscalar(importance):
        r = _float_arg(name, importance, 0.0, 1.0, lo_open=True)
        return r ** np.arange(n, dtype=np.float64)  # the paper's geometric decay I_i = r^i
    vec = np.asarray(importance, dtype=np.float64).reshape(-1)
    if vec.shape != (n,) or not np.all(np.isfinite(vec)) or np.any(vec < 0):
        raise InterpError(
            f"{name} must be a decay in (0, 1] or {n} non-negative finite numbers, got shape {vec.shape}"
        )
    return vec


def _feature_measures(w: np.ndarray):
    norms = np.linalg.norm(w, axis=0)
    safe = np.where(norms > 0, norms, 1.0)
    w_hat = w / safe
    overlap = (w_hat.T @ w) ** 2  # [i, j] = (Ŵ_i · W_j)²
    total = overlap.sum(1)  # includes j = i, which is ‖W_i‖²
    interference = total - norms**2
    dimensionality = np.where(norms > 0, norms**2 / np.where(total > 0, total, 1.0), 0.0)
    interference = np.where(norms > 0, np.maximum(interference, 0.0), 0.0)
    return norms, interference, dimensionality


@contextlib.contextmanager
def _one_intra_op_thread():
    """Run tiny tensor work on one thread: a [256, 20] matmul gains nothing from a second one, and on a shared
    CPU each op's thread hand-off costs more than the op (measured: 2 ms a toy step on one thread, 60-110 ms
    on two while other processes ran). torch's setting is process-wide, so it is restored on exit."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _train_toy_batch(n_features, d_hidden, probs, importances, steps, batch_size, lr, seed, progress=False):
    """Train K independent toy models at once (W [K, m, n]); the loss is a sum over instances and Adam is
    elementwise, so the instances do not interact."""
    from interp.progress import progress_bar

    k = len(probs)
    gen = torch.Generator().manual_seed(int(seed))
    w = torch.empty(k, d_hidden, n_features, dtype=torch.float32)
    for i in range(k):
        torch.nn.init.xavier_normal_(w[i], generator=gen)
    w.requires_grad_(True)
    b = torch.zeros(k, n_features, requires_grad=True)
    p = torch.tensor(probs, dtype=torch.float32).view(k, 1, 1)
    imp = torch.tensor(np.stack(importances), dtype=torch.float32).view(k, 1, n_features)
    opt = torch.optim.Adam([w, b], lr=lr)
    history = torch.empty(steps, k)
    with _one_intra_op_thread():
        for step in progress_bar(range(steps), enabled=progress, desc="toy model", unit="step", leave=False):
            # Each feature is active with probability p, then uniform on [0, 1] (the paper's data).
            active = torch.rand(k, batch_size, n_features, generator=gen) < p
            x = torch.rand(k, batch_size, n_features, generator=gen) * active
            h = x @ w.transpose(1, 2)  # [k, batch, m]
            out = torch.relu(h @ w + b[:, None, :])
            per_model = (imp * (x - out) ** 2).sum(-1).mean(-1)  # [k] importance-weighted MSE
            opt.zero_grad(set_to_none=True)
            per_model.sum().backward()
            opt.step()
            history[step] = per_model.detach()
    return w.detach().double().numpy(), b.detach().double().numpy(), history.double().numpy()


def _toy_result(n, m, prob, imp, w, b, hist) -> ToyModelResult:
    norms, interf, dimen = _feature_measures(w)
    frob = float((w**2).sum())
    features = pd.DataFrame(
        {
            "feature": np.arange(n),
            "importance": imp,
            "norm": norms,
            "interference": interf,
            "dimensionality": dimen,
            "represented": norms > 0.5,
            "bias": b,
        }
    )
    return ToyModelResult(
        n_features=n,
        d_hidden=m,
        feature_probability=float(prob),
        importance=imp,
        W=w,
        b=b,
        feature_norms=norms,
        interference=interf,
        dimensionality=dimen,
        dimensions_per_feature=m / frob if frob > 0 else float("inf"),
        final_loss=float(hist[-1]) if len(hist) else float("nan"),
        history=pd.DataFrame({"step": np.arange(len(hist)), "loss": hist}),
        features=features,
    )


def _toy_args(n_features, d_hidden, steps, batch_size, lr):
    n = _int_arg("n_features", n_features, 1)
    m = _int_arg("d_hidden", d_hidden, 1)
    steps = _int_arg("steps", steps, 1)
    bs = _int_arg("batch_size", batch_size, 1)
    lr = _float_arg("lr", lr, 0.0, 1.0, lo_open=True)
    return n, m, steps, bs, lr


def train_toy_model(
    n_features: int = 20,
    d_hidden: int = 5,
    feature_probability: float = 0.1,
    importance=0.7,
    steps: int = 2000,
    seed: int = 0,
    batch_size: int = 1024,
    lr: float = 1e-2,
    progress: bool = False,
) -> ToyModelResult:
    """Train one toy model of superposition: x' = ReLU(WᵀW x + b), W [d_hidden, n_features].

    Each feature is nonzero with probability ``feature_probability`` (then uniform on [0, 1]); the loss is
    the importance-weighted MSE Σ_i I_i (x_i - x'_i)². ``importance`` is a geometric decay r (I_i = r^i), a
    vector of n_features weights, or None (all 1). Adam, deterministic given ``seed``. Dense features give
    about d_hidden represented features (a PCA-like solution); sparse ones pack more than d_hidden.
    ``progress`` draws a step bar on a terminal (:mod:`interp.progress`).

    >>> r = train_toy_model(6, 2, feature_probability=1.0, importance=0.7, steps=500, seed=0)
    >>> r.W.shape, r.n_represented
    ((2, 6), 2)
    """
    n, m, steps, bs, lr = _toy_args(n_features, d_hidden, steps, batch_size, lr)
    prob = _float_arg("feature_probability", feature_probability, 0.0, 1.0, lo_open=True)
    imp = _importance_vector("importance", importance, n)
    w, b, hist = _train_toy_batch(n, m, [prob], [imp], steps, bs, lr, seed, progress)
    return _toy_result(n, m, prob, imp, w[0], b[0], hist[:, 0])


def sweep_toy_models(
    n_features: int = 20,
    d_hidden: int = 5,
    feature_probabilities: Sequence[float] = (1.0, 0.3, 0.1, 0.03, 0.01),
    importances: Sequence = (0.7,),
    steps: int = 2000,
    seed: int = 0,
    batch_size: int = 1024,
    lr: float = 1e-2,
    progress: bool = False,
) -> pd.DataFrame:
    """Train a toy model for every (feature_probability, importance) pair, all in one batched run.

    Tidy DataFrame, one row per (model, feature): ``feature_probability, sparsity`` (1 - p),
    ``importance_decay`` (NaN when a vector was given), ``importance_index``, ``feature, importance, norm,
    interference, dimensionality, represented, bias``, and per-model ``dimensions_per_feature,
    n_represented, final_loss``.

    >>> df = sweep_toy_models(6, 2, feature_probabilities=(1.0, 0.05), steps=300)
    >>> sorted(df.feature_probability.unique().tolist()), len(df)
    ([0.05, 1.0], 12)
    """
    n, m, steps, bs, lr = _toy_args(n_features, d_hidden, steps, batch_size, lr)
    if len(feature_probabilities) == 0 or len(importances) == 0:
        raise InterpError("feature_probabilities and importances must each hold at least one value, got none")
    probs = [_float_arg("feature_probabilities[]", p, 0.0, 1.0, lo_open=True) for p in feature_probabilities]
    imps = [_importance_vector("importances[]", i, n) for i in importances]
    combos = [(p, ii) for ii in range(len(imps)) for p in probs]
    w, b, hist = _train_toy_batch(
        n, m, [p for p, _ in combos], [imps[ii] for _, ii in combos], steps, bs, lr, seed, progress
    )
    frames = []
    for k, (p, ii) in enumerate(combos):
        r = _toy_result(n, m, p, imps[ii], w[k], b[k], hist[:, k])
        f = r.features.copy()
        decay = importances[ii]
        f.insert(0, "feature_probability", p)
        f.insert(1, "sparsity", 1.0 - p)
        f.insert(2, "importance_decay", float(decay) if np.isscalar(decay) else float("nan"))
        f.insert(3, "importance_index", ii)
        f["dimensions_per_feature"] = r.dimensions_per_feature
        f["n_represented"] = r.n_represented
        f["final_loss"] = r.final_loss
        frames.append(f)
    return pd.concat(frames, ignore_index=True)
