"""Superposition & near-orthogonality analyzer, checked against independent references.

* closed forms: d=2 (uniform angle) and d=3 (uniform cosine) exact values, the Gaussian limit for large d,
  scipy's Beta distribution, quadrature of the pdf, and Monte-Carlo with real Gaussian vectors drawn here;
* sklearn's ``johnson_lindenstrauss_min_dim``; the regular simplex meeting the Welch bound with equality;
* model direction sets: numpy all-pairs references, the full d_model×d_model SVD for OV/QK, GQA against the
  same model with its kv heads repeated, a planted shared offset, and a real random ``HookedDecoder``;
* the packing optimiser: closed-form gradient vs autograd, the simplex optimum, exact histograms;
* toy models: hand-built W with known dimensionalities, the Elhage et al. dense-vs-sparse behaviour.
"""

from __future__ import annotations

import doctest
import itertools
import math
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import integrate, stats

import interp.analysis.superposition as sp
from interp.analysis.superposition import (
    direction_angle_samples,
    direction_set_stats,
    jl_max_vectors,
    jl_min_dim,
    near_orthogonal_fraction,
    pack_near_orthogonal,
    random_angle_cdf,
    random_angle_moments,
    random_angle_pdf,
    random_angle_stats,
    random_cos_pdf,
    sweep_toy_models,
    train_toy_model,
    welch_bound,
)
from interp.errors import InterpError


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # Everything here is tiny; on a shared CPU, intra-op threads only add synchronisation cost (10x+).
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _mc_cosines(dim: int, n: int, seed: int) -> np.ndarray:
    """Independent Monte-Carlo (not the module's sampler): cosines of random Gaussian vector pairs."""
    rng = np.random.default_rng(seed)
    u = rng.standard_normal((n, dim))
    v = rng.standard_normal((n, dim))
    return (u * v).sum(1) / np.linalg.norm(u, axis=1) / np.linalg.norm(v, axis=1)


# ---------------------------------------------------------------------------------------------------------
# closed forms


@pytest.mark.parametrize("tol", [0.5, 1.0, 7.0, 45.0, 90.0])
def test_fraction_known_values_d2_d3(tol):
    assert near_orthogonal_fraction(2, tol) == 2 * tol / 180
    assert near_orthogonal_fraction(3, tol) == pytest.approx(math.sin(math.radians(tol)), abs=1e-14)


@pytest.mark.parametrize("dim,tol", [(5, 10.0), (20, 5.0), (100, 1.0), (300, 2.0)])
def test_fraction_matches_monte_carlo(dim, tol):
    n = 40_000
    c = _mc_cosines(dim, n, seed=dim)
    p_mc = np.mean(np.abs(np.degrees(np.arccos(c)) - 90) <= tol)
    p = near_orthogonal_fraction(dim, tol)
    assert abs(p_mc - p) < 4 * math.sqrt(p * (1 - p) / n)


def test_fraction_large_dim_gaussian_limit_and_seed_claims():
    # cos·sqrt(d) -> N(0, 1): an independent closed form for large d.
    for d in (1000, 10_000, 100_000):
        s = math.sin(math.radians(1.0)) * math.sqrt(d)
        assert near_orthogonal_fraction(d) == pytest.approx(2 * stats.norm.cdf(s) - 1, abs=2e-3)
    # The background articles: ~1% in 2-3 dims, ~14% at 100, >40% at 1000, >90% at 10 000.
    assert near_orthogonal_fraction(2) < 0.02 and near_orthogonal_fraction(3) < 0.02
    assert 0.13 < near_orthogonal_fraction(100) < 0.15
    assert near_orthogonal_fraction(1000) > 0.40 and near_orthogonal_fraction(10_000) > 0.90
    fr = [near_orthogonal_fraction(d) for d in (2, 3, 10, 100, 1000, 10_000)]
    assert all(a < b for a, b in itertools.pairwise(fr))
    assert near_orthogonal_fraction(50, 0.0) == 0.0


@pytest.mark.parametrize("dim", [2, 3, 4, 10, 100, 5000])
def test_angle_pdf_integrates_to_one_and_cdf_is_its_integral(dim):
    pdf = lambda deg: float(random_angle_pdf(dim, [deg]).pdf_per_deg.iloc[0])
    pts = [90.0 - k * 50 / math.sqrt(dim) for k in (1, 0.2)] + [90.0]
    total = integrate.quad(pdf, 0, 180, points=sorted(p for p in pts if 0 < p < 180), limit=200)[0]
    assert total == pytest.approx(1.0, abs=1e-8)
    for a in (10.0, 60.0, 89.0, 90.0, 91.5, 150.0):
        part = integrate.quad(pdf, 0, a, points=[p for p in pts if 0 < p < a] or None, limit=200)[0]
        assert float(random_angle_cdf(dim, a)) == pytest.approx(part, abs=1e-8)
    df = random_angle_pdf(dim, n_points=2001)
    assert np.trapezoid(df.pdf_per_rad, np.radians(df.angle_deg)) == pytest.approx(1.0, abs=1e-3)
    assert df.cdf.is_monotonic_increasing and df.cdf.iloc[0] == 0 and df.cdf.iloc[-1] == pytest.approx(1.0)


@pytest.mark.parametrize("dim", [2, 3, 7, 60])
def test_cos_pdf_matches_scipy_beta(dim):
    # t² ~ Beta(1/2, (d-1)/2) and t is symmetric: f_t(t) = f_beta(t²)·|t|.
    t = np.array([-0.9, -0.3, 0.05, 0.4, 0.77])
    ref = stats.beta(0.5, (dim - 1) / 2).pdf(t * t) * np.abs(t)
    np.testing.assert_allclose(random_cos_pdf(dim, t), ref, rtol=1e-10)
    assert integrate.quad(lambda x: float(random_cos_pdf(dim, x)), -1, 1, limit=200)[0] == pytest.approx(
        1, abs=1e-7
    )


def test_moments_closed_forms_and_monte_carlo():
    m2, m3 = random_angle_moments(2), random_angle_moments(3)
    assert m2["std_angle_deg"] == pytest.approx(180 / math.sqrt(12), rel=1e-12)
    assert m2["mean_abs_cos"] == pytest.approx(2 / math.pi, rel=1e-12)
    # d=3: density sin(θ)/2, Var(θ) = (π² - 8)/4.
    assert math.radians(m3["std_angle_deg"]) == pytest.approx(math.sqrt((math.pi**2 - 8) / 4), rel=1e-9)
    assert m3["mean_abs_cos"] == pytest.approx(0.5, rel=1e-12)
    for d in (10, 400):
        m = random_angle_moments(d)
        c = _mc_cosines(d, 40_000, seed=d + 1)
        ang = np.degrees(np.arccos(c))
        assert m["mean_angle_deg"] == 90.0 and abs(ang.mean() - 90) < 4 * ang.std() / 200
        assert m["std_angle_deg"] == pytest.approx(ang.std(), rel=0.02)
        assert m["mean_abs_cos"] == pytest.approx(np.abs(c).mean(), rel=0.02)
        assert m["std_cos"] == pytest.approx(c.std(), rel=0.02)


def test_random_angle_stats_frame():
    df = random_angle_stats(dims=(2, 3, 100, 2000), tolerance_deg=2.0, n_pairs=6000, seed=1)
    assert list(df.dim) == [2, 3, 100, 2000]
    assert {
        "exact_frac_within_tol",
        "mc_frac_within_tol",
        "mc_frac_stderr",
        "exact_std_angle_deg",
        "mc_std_angle_deg",
        "exact_mean_abs_cos",
        "mc_mean_abs_cos",
    } <= set(df.columns)
    assert (abs(df.mc_frac_within_tol - df.exact_frac_within_tol) < 4 * df.mc_frac_stderr).all()
    assert np.allclose(df.mc_std_angle_deg, df.exact_std_angle_deg, rtol=0.05)
    assert (df.exact_mean_angle_deg == 90).all()
    # Seeded: the same call gives the same numbers.
    pd.testing.assert_frame_equal(
        df, random_angle_stats(dims=(2, 3, 100, 2000), tolerance_deg=2.0, n_pairs=6000, seed=1)
    )
    assert random_angle_stats(dims=(10,), n_pairs=0).mc_frac_within_tol.isna().all()


def test_closed_form_errors_name_the_argument():
    with pytest.raises(InterpError, match=r"dim must be an integer >= 2, got 1"):
        near_orthogonal_fraction(1)
    with pytest.raises(InterpError, match=r"tolerance_deg must be a number in \[0.0, 90.0\], got 120"):
        near_orthogonal_fraction(10, 120)
    with pytest.raises(InterpError, match="angles_deg"):
        random_angle_pdf(10, [-5.0])


# ---------------------------------------------------------------------------------------------------------
# Johnson–Lindenstrauss and Welch


def test_jl_min_dim_equals_sklearn():
    from sklearn.random_projection import johnson_lindenstrauss_min_dim

    for n in (2, 10, 1000, 49152, 10**6, 10**9):
        for eps in (0.01, 0.1, 0.25, 0.5, 0.9):
            assert jl_min_dim(n, eps) == int(johnson_lindenstrauss_min_dim(n, eps=eps))
    with pytest.raises(InterpError, match="eps"):
        jl_min_dim(100, 1.0)
    with pytest.raises(InterpError, match="n_vectors"):
        jl_min_dim(0, 0.1)


@pytest.mark.parametrize("dim,eps", [(10, 0.5), (100, 0.1), (100, 0.5), (768, 0.2), (12288, 0.1)])
def test_jl_max_vectors_inverts_the_bound(dim, eps):
    n = jl_max_vectors(dim, eps)
    den = eps**2 / 2 - eps**3 / 3
    assert n >= 1 and jl_min_dim(n, eps) <= dim
    if n > 1 or 4 * math.log(2) / den <= dim:
        assert 4 * math.log(n + 1) / den > dim  # the largest such n


@pytest.mark.parametrize("dim,eps", [(20, 0.5), (100, 0.3), (1000, 0.1)])
def test_jl_max_vectors_random_union_bound(dim, eps):
    n = jl_max_vectors(dim, eps, method="random")
    p_tail = stats.beta(0.5, (dim - 1) / 2).sf(eps * eps)  # P(|cos| > eps), via scipy's Beta
    assert math.comb(n, 2) * p_tail < 1 <= math.comb(n + 1, 2) * p_tail
    assert n >= jl_max_vectors(dim, eps)  # the exact tail is tighter than JL's constants


def test_random_count_expected_bad_pairs_below_one():
    # Monte-Carlo: with N = jl_max_vectors(.., "random") random unit vectors, bad pairs average < 1.
    dim, eps = 20, 0.5
    n = jl_max_vectors(dim, eps, method="random")
    rng = np.random.default_rng(0)
    bad = []
    for _ in range(300):
        x = rng.standard_normal((n, dim))
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        c = x @ x.T
        bad.append(int((np.abs(c[np.triu_indices(n, 1)]) > eps).sum()))
    expected = math.comb(n, 2) * stats.beta(0.5, (dim - 1) / 2).sf(eps * eps)
    assert expected < 1.0
    assert abs(np.mean(bad) - expected) < 4 * np.std(bad) / math.sqrt(len(bad))
    assert min(bad) == 0  # a witness: some draw of N vectors has every |cos| <= eps


def test_welch_bound_met_by_simplex_and_never_beaten():
    for d in (2, 3, 10):
        e = np.eye(d + 1) - 1.0 / (d + 1)  # centred basis: a regular simplex inside a d-dim subspace
        basis = np.linalg.svd(e)[2][:d]
        x = e @ basis.T
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        c = np.abs(x @ x.T)[np.triu_indices(d + 1, 1)]
        assert c.max() == pytest.approx(welch_bound(d + 1, d), abs=1e-12) == pytest.approx(1 / d)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((50, 8))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    assert np.abs(x @ x.T)[np.triu_indices(50, 1)].max() >= welch_bound(50, 8)
    assert welch_bound(5, 10) == 0.0


# ---------------------------------------------------------------------------------------------------------
# model direction sets


def _stand_in(seed=0, d_model=24, vocab=40, layers=2, heads=4, kv=2, d_head=6, d_mlp=48):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)
    return SimpleNamespace(
        W_E=r(vocab, d_model),
        W_U=r(d_model, vocab),
        W_pos=None,
        W_Q=r(layers, heads, d_model, d_head),
        W_K=r(layers, kv, d_model, d_head),
        W_V=r(layers, kv, d_model, d_head),
        W_O=r(layers, heads, d_head, d_model),
        W_in=r(layers, d_model, d_mlp),
        W_gate=None,
        W_out=r(layers, d_mlp, d_model),
    )


def _all_pair_cos(x: np.ndarray, owner=None) -> np.ndarray:
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    i, j = np.triu_indices(len(x), 1)
    if owner is not None:
        keep = owner[i] != owner[j]
        i, j = i[keep], j[keep]
    return np.clip((x[i] * x[j]).sum(1), -1, 1)


def test_exact_stats_match_numpy_reference():
    m = _stand_in()
    df = direction_set_stats(
        m, sets=("W_E", "W_U", "W_in", "W_out", "W_Q", "W_K", "W_O"), max_pairs=10**6, tolerance_deg=5.0
    )
    refs = {("W_E", None, None): m.W_E.numpy(), ("W_U", None, None): m.W_U.T.numpy()}
    for l in range(2):
        refs[("W_in", l, None)] = m.W_in[l].T.numpy()
        refs[("W_out", l, None)] = m.W_out[l].numpy()
        for h in range(4):
            refs[("W_Q", l, h)] = m.W_Q[l, h].T.numpy()
            refs[("W_O", l, h)] = m.W_O[l, h].numpy()
        for h in range(2):
            refs[("W_K", l, h)] = m.W_K[l, h].T.numpy()
    assert len(df) == len(refs)
    for row in df.itertuples():
        key = (
            row.set,
            None if pd.isna(row.layer) else int(row.layer),
            None if pd.isna(row.head) else int(row.head),
        )
        x = refs[key].astype(np.float64)
        c = _all_pair_cos(x)
        ang = np.degrees(np.arccos(c))
        assert row.exact and row.count == len(x) and row.dim == x.shape[1] and row.n_pairs == len(c)
        assert row.mean_abs_cos == pytest.approx(np.abs(c).mean(), abs=1e-6)
        assert row.max_abs_cos == pytest.approx(np.abs(c).max(), abs=1e-6)
        assert row.mean_cos == pytest.approx(c.mean(), abs=1e-6)
        assert row.frac_within_tol == pytest.approx(np.mean(np.abs(ang - 90) <= 5.0))
        assert row.baseline_mean_abs_cos == pytest.approx(random_angle_moments(x.shape[1])["mean_abs_cos"])


def test_ov_qk_directions_match_full_svd():
    m = _stand_in(seed=3)
    ov = direction_angle_samples(m, "OV", max_pairs=10**6, include_baseline=False)
    qk = direction_angle_samples(m, "QK", max_pairs=10**6, include_baseline=False, k_singular=3)
    owner6 = np.repeat(np.arange(4), 6)
    owner3 = np.repeat(np.arange(4), 3)
    for l in range(2):
        w_dirs, q_dirs = [], []
        for h in range(4):
            kv = h // 2  # GQA: 4 query heads share 2 kv heads
            _, _, vh = np.linalg.svd(m.W_V[l, kv].double().numpy() @ m.W_O[l, h].double().numpy())
            w_dirs.append(vh[:6])
            u, _, _ = np.linalg.svd(m.W_Q[l, h].double().numpy() @ m.W_K[l, kv].double().numpy().T)
            q_dirs.append(u[:, :3].T)
        for frame, dirs, owner in ((ov, w_dirs, owner6), (qk, q_dirs, owner3)):
            ref = np.sort(np.abs(_all_pair_cos(np.concatenate(dirs), owner)))
            got = np.sort(np.abs(frame[frame.layer == l].cos.to_numpy()))
            np.testing.assert_allclose(got, ref, atol=1e-9)
    # Within-head pairs are excluded: 24 directions, 4 heads of 6 -> C(24,2) - 4·C(6,2) pairs.
    assert (ov.layer == 0).sum() == math.comb(24, 2) - 4 * math.comb(6, 2)


def test_gqa_equals_mha_with_repeated_kv_heads():
    gqa = _stand_in(seed=5)
    mha = SimpleNamespace(**vars(gqa))
    mha.W_K = gqa.W_K.repeat_interleave(2, dim=1)  # query head h reads kv head h // 2
    mha.W_V = gqa.W_V.repeat_interleave(2, dim=1)
    for s in ("OV", "QK"):
        a = direction_angle_samples(gqa, s, max_pairs=10**6, include_baseline=False, k_singular=2)
        b = direction_angle_samples(mha, s, max_pairs=10**6, include_baseline=False, k_singular=2)
        np.testing.assert_allclose(np.abs(a.cos.to_numpy()), np.abs(b.cos.to_numpy()), atol=1e-9)


def test_random_init_model_matches_random_baseline():
    from interp.model.config import DecoderConfig
    from interp.model.transformer import HookedDecoder

    torch.manual_seed(0)
    model = HookedDecoder(
        DecoderConfig(d_vocab=512, n_ctx=16, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, d_mlp=256)
    )
    df = direction_set_stats(
        model, sets=("W_E", "W_U", "W_in", "W_out", "W_O", "OV"), max_pairs=20_000, seed=0
    )
    assert set(df.set) == {"W_E", "W_U", "W_in", "W_out", "W_O", "OV"}
    big = df[df.set.isin(["W_E", "W_U", "W_in", "W_out"])]
    assert (big.n_pairs == 20_000).all() and not big.exact.any()
    assert (big["count"] == [512, 512, 256, 256, 256, 256]).all() and (big.dim == 64).all()
    # Gaussian init directions are uniformly random: every statistic sits on the baseline, within 5 standard
    # errors computed here from the Beta(1/2, (d-1)/2) law of cos² (pairs sharing a vector are only weakly
    # dependent, so the iid standard error is a fair yardstick).
    d = 64
    beta = stats.beta(0.5, (d - 1) / 2)
    e_abs = beta.expect(np.sqrt)
    for row in df.itertuples():
        n = row.n_pairs
        assert row.baseline_mean_abs_cos == pytest.approx(e_abs, rel=1e-6)
        assert abs(row.mean_abs_cos - e_abs) < 5 * math.sqrt((1 / d - e_abs**2) / n)
        assert abs(row.std_cos**2 - 1 / d) < 5 * math.sqrt((3 / (d * (d + 2)) - 1 / d**2) / n)
        p = row.baseline_frac_within_tol
        assert abs(row.frac_within_tol - p) < 5 * math.sqrt(p * (1 - p) / n) + 1 / n
        assert abs(row.mean_angle_deg - 90) < 5 * row.baseline_std_angle_deg / math.sqrt(n)
        assert row.std_angle_deg == pytest.approx(row.baseline_std_angle_deg, rel=0.15)
        # The largest of n |cos| values: within its own 0.01%..99.99% quantiles, F_max(x) = F(x)^n.
        lo, hi = (math.sqrt(beta.ppf(q ** (1 / n))) for q in (1e-4, 1 - 1e-4))
        assert lo < row.max_abs_cos < hi and lo < row.baseline_max_abs_cos < hi
    assert (df[df.set == "W_O"]["count"] == 16).all()
    assert df[df.set == "OV"].n_pairs.tolist() == [math.comb(64, 2) - 4 * math.comb(16, 2)] * 2


def test_shared_offset_is_detected_and_centering_removes_it():
    g = torch.Generator().manual_seed(1)
    common = torch.randn(32, generator=g)
    rows = torch.randn(300, 32, generator=g) + 1.5 * common / common.norm() * math.sqrt(32) / 4
    m = SimpleNamespace(W_E=rows)
    raw = direction_set_stats(m, sets=("W_E",)).iloc[0]
    cen = direction_set_stats(m, sets=("W_E",), center=True).iloc[0]
    assert raw.mean_cos > 0.05 and raw.mean_abs_cos > 1.2 * raw.baseline_mean_abs_cos
    assert abs(cen.mean_cos) < 0.01 and cen.mean_abs_cos == pytest.approx(cen.baseline_mean_abs_cos, rel=0.05)


def test_available_direction_sets():
    m = _stand_in()
    assert sp.available_direction_sets(m) == [
        "W_E",
        "W_U",
        "W_in",
        "W_out",
        "W_Q",
        "W_K",
        "W_V",
        "W_O",
        "OV",
        "QK",
    ]
    from interp.model.config import DecoderConfig
    from interp.model.transformer import HookedDecoder

    rot = HookedDecoder(
        DecoderConfig(d_vocab=50, n_ctx=8, d_model=16, n_layers=1, n_heads=2, positional="rotary", gated=True)
    )
    names = sp.available_direction_sets(rot)
    assert "W_pos" not in names and "W_gate" in names
    with pytest.raises(InterpError, match="W_pos"):
        direction_set_stats(rot, sets=("W_pos",))


def test_zero_rows_layers_and_errors():
    m = _stand_in()
    m.W_E[:5] = 0
    row = direction_set_stats(m, sets=("W_E",), max_pairs=10**6).iloc[0]
    assert row.n_zero == 5 and row["count"] == 35 and row.n_pairs == math.comb(35, 2)
    only1 = direction_set_stats(m, sets=("W_in", "W_E"), layers=1)
    assert only1.layer.dropna().tolist() == [1] and "W_E" in set(only1.set)
    with pytest.raises(InterpError, match="W_gate"):
        direction_set_stats(m, sets=("W_gate",))
    with pytest.raises(InterpError, match="sets entries must be among"):
        direction_set_stats(m, sets=("W_X",))
    with pytest.raises(InterpError, match="max_pairs must be an integer >= 1, got 0"):
        direction_set_stats(m, max_pairs=0)


def test_angle_samples_baseline_follows_exact_distribution():
    m = SimpleNamespace(W_U=torch.randn(32, 3000, generator=torch.Generator().manual_seed(2)))
    df = direction_angle_samples(m, "W_U", max_pairs=5000, seed=0)
    assert df.groupby("source").size().to_dict() == {"model": 5000, "random": 5000}
    assert np.allclose(np.cos(np.radians(df.angle_deg)), df.cos, atol=1e-9)
    for src in ("model", "random"):
        ang = df[df.source == src].angle_deg.to_numpy()
        assert stats.kstest(ang, lambda a: random_angle_cdf(32, a)).pvalue > 1e-3
    again = direction_angle_samples(m, "W_U", max_pairs=5000, seed=0)
    pd.testing.assert_frame_equal(df, again)


# ---------------------------------------------------------------------------------------------------------
# packing optimiser


@pytest.mark.parametrize("power", [2.0, 3.0, 4.0])
def test_gram_pass_gradient_matches_autograd(power):
    g = torch.Generator().manual_seed(0)
    u = torch.randn(37, 6, generator=g, dtype=torch.float64)
    u /= u.norm(dim=1, keepdim=True)
    loss, grad, max_abs, mean_abs, _ = sp._gram_pass(u, 0.2, power, chunk=8, want_grad=True)
    x = u.clone().requires_grad_(True)
    c = x @ x.T
    i, j = torch.triu_indices(37, 37, 1)
    ref = ((c[i, j].abs() - 0.2).clamp_min(0) ** power).mean()
    ref.backward()
    assert loss == pytest.approx(float(ref.detach()), rel=1e-10)
    torch.testing.assert_close(grad, x.grad, rtol=1e-9, atol=1e-12)
    c = c.detach()[i, j].abs()
    assert max_abs == pytest.approx(float(c.max())) and mean_abs == pytest.approx(float(c.mean()))


def test_packing_lowers_max_cos_and_reports_exact_histograms():
    r = pack_near_orthogonal(300, 30, steps=80, seed=0)
    assert r.max_abs_cos_after < 0.8 * r.max_abs_cos_before
    assert r.welch_bound <= r.max_abs_cos_after
    x = r.vectors.astype(np.float64)
    assert np.allclose(np.linalg.norm(x, axis=1), 1, atol=1e-5)
    c = _all_pair_cos(x)
    assert r.max_abs_cos_after == pytest.approx(np.abs(c).max(), abs=1e-5)
    assert r.mean_abs_cos_after == pytest.approx(np.abs(c).mean(), abs=1e-5)
    counts, _ = np.histogram(np.degrees(np.arccos(c)), bins=360, range=(0, 180))
    assert r.after["count"].sum() == r.before["count"].sum() == math.comb(300, 2)
    assert np.abs(r.after["count"].to_numpy() - counts).sum() <= 4  # float32 vs float64 at bin edges
    assert list(r.history.columns) == ["step", "loss", "max_abs_cos", "mean_abs_cos"] and len(r.history) == 81
    assert r.history.loss.iloc[-1] < r.history.loss.iloc[0]
    again = pack_near_orthogonal(300, 30, steps=80, seed=0)
    np.testing.assert_array_equal(r.vectors, again.vectors)


def test_packing_reaches_the_simplex_and_orthonormal_optima():
    # power=2 keeps a useful gradient right down to the margin, so small structured optima come out exact.
    simplex = pack_near_orthogonal(11, 10, steps=300, seed=1, power=2.0)
    assert simplex.max_abs_cos_after == pytest.approx(0.1, abs=1e-4)  # Welch equality: the regular simplex
    ortho = pack_near_orthogonal(8, 12, steps=300, seed=1, power=2.0)
    assert ortho.margin == 0.0 and ortho.max_abs_cos_after < 1e-4
    with pytest.raises(InterpError, match="n_vectors"):
        pack_near_orthogonal(1, 10)


# ---------------------------------------------------------------------------------------------------------
# toy models of superposition


def test_feature_measures_on_planted_geometries():
    # features 0,1 antipodal on axis 0; feature 2 alone on axis 1; feature 3 unrepresented.
    w = np.array([[1.0, -1.0, 0.0, 0.0], [0.0, 0.0, 2.0, 0.0]])
    norms, interf, dimen = sp._feature_measures(w)
    np.testing.assert_allclose(norms, [1, 1, 2, 0])
    np.testing.assert_allclose(interf, [1, 1, 0, 0])
    np.testing.assert_allclose(dimen, [0.5, 0.5, 1.0, 0.0])
    # Random W against the definitions written as loops.
    w = np.random.default_rng(0).standard_normal((3, 7))
    norms, interf, dimen = sp._feature_measures(w)
    for i in range(7):
        wi_hat = w[:, i] / np.linalg.norm(w[:, i])
        proj = [(wi_hat @ w[:, j]) ** 2 for j in range(7)]
        assert interf[i] == pytest.approx(sum(proj) - proj[i])
        assert dimen[i] == pytest.approx(np.linalg.norm(w[:, i]) ** 2 / sum(proj))
    # The D_i of an m-dim model sum to at most m (the paper's "dimensions used").
    assert dimen.sum() <= 3 + 1e-9


def test_toy_models_dense_vs_sparse():
    n, m = 20, 5
    df = sweep_toy_models(n, m, feature_probabilities=(1.0, 0.02), importances=(0.7,), steps=800, seed=0)
    per = df.groupby("feature_probability").first()
    dense, sparse = per.loc[1.0], per.loc[0.02]
    # Dense: a PCA-like solution, the m most important features each get a dimension.
    assert m - 1 <= dense.n_represented <= m + 1
    assert dense.dimensions_per_feature == pytest.approx(1.0, abs=0.2)
    top = df[df.feature_probability == 1.0].sort_values("feature")
    assert top.represented.iloc[:m].all() and not top.represented.iloc[m + 1 :].any()
    # Sparse: superposition, more features than dimensions, fewer dimensions each.
    assert sparse.n_represented > m
    assert m / n * 0.7 <= sparse.dimensions_per_feature < 0.7 * dense.dimensions_per_feature
    assert df[df.feature_probability == 0.02].interference.max() > 0.05
    assert set(df.columns) >= {
        "feature_probability",
        "sparsity",
        "importance_decay",
        "feature",
        "importance",
        "norm",
        "interference",
        "dimensionality",
        "represented",
        "dimensions_per_feature",
        "n_represented",
        "final_loss",
    }


def test_train_toy_model_result_is_consistent_and_deterministic():
    r = train_toy_model(10, 3, feature_probability=0.1, importance=[1.0] * 5 + [0.5] * 5, steps=300, seed=4)
    again = train_toy_model(
        10, 3, feature_probability=0.1, importance=[1.0] * 5 + [0.5] * 5, steps=300, seed=4
    )
    np.testing.assert_array_equal(r.W, again.W)
    assert r.W.shape == (3, 10) and r.b.shape == (10,) and len(r.history) == 300
    assert r.dimensions_per_feature == pytest.approx(3 / (r.W**2).sum())
    np.testing.assert_allclose(r.feature_norms, np.linalg.norm(r.W, axis=0))
    assert r.history.loss.tail(50).mean() < r.history.loss.head(10).mean()
    # The reported loss is the importance-weighted MSE of x' = ReLU(WᵀW x + b) on this data distribution.
    rng = np.random.default_rng(0)
    x = rng.random((200_000, 10)) * (rng.random((200_000, 10)) < 0.1)
    out = np.maximum(x @ r.W.T @ r.W + r.b, 0)
    ref = ((x - out) ** 2 * r.importance).sum(1).mean()
    assert ref == pytest.approx(r.history.loss.tail(50).mean(), rel=0.15)
    with pytest.raises(InterpError, match="importance"):
        train_toy_model(10, 3, importance=[1.0, 2.0])
    with pytest.raises(InterpError, match=r"feature_probability must be a number in \(0.0, 1.0\]"):
        train_toy_model(10, 3, feature_probability=0.0)


# ---------------------------------------------------------------------------------------------------------
# docstring examples


def test_docstring_examples_run():
    res = doctest.testmod(sp, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert res.attempted > 30 and res.failed == 0
