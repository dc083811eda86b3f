"""engine.crf.lattice: the torch permutohedral lattice against densecrf's and against a true Gaussian."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.crf.lattice import PermutohedralLattice


def _features(n, d, spread, seed=0):
    return torch.from_numpy(np.random.default_rng(seed).random((n, d), dtype=np.float32) * spread)


def test_weights_and_splat_slice_are_adjoint():
    lat = PermutohedralLattice(_features(300, 5, 4.0))
    torch.testing.assert_close(lat._slice_w.sum(1), torch.ones(300), atol=1e-5, rtol=0)
    assert (lat._slice_w >= -1e-6).all()
    x = torch.rand(300, 3)
    v = torch.rand(lat.n_vertices, 3)
    # <slice(v), x> = alpha <v, splat(x)>: splat is exactly the transpose of slice.
    lhs = (lat.slice(v) * x).sum()
    rhs = lat.alpha * (v * lat.splat(x)).sum()
    torch.testing.assert_close(lhs, rhs, rtol=1e-5, atol=1e-4)


def test_filter_approximates_a_gaussian():
    f = _features(400, 2, 6.0, seed=1)
    lat = PermutohedralLattice(f)
    x = torch.rand(400, 1)
    exact = torch.exp(-torch.cdist(f, f) ** 2 / 2) @ x
    approx = lat.filter(x)
    corr = np.corrcoef(exact[:, 0].numpy(), approx[:, 0].numpy())[0, 1]
    assert corr > 0.95


def test_far_apart_points_do_not_interact():
    f = torch.tensor([[0.0, 0.0], [0.1, 0.0], [100.0, 100.0]])
    out = PermutohedralLattice(f).filter(torch.tensor([[1.0], [0.0], [0.0]]))
    assert out[1, 0] > 0.1 and out[2, 0] == 0


@pytest.mark.parametrize("d,spread", [(2, 3.0), (2, 20.0), (5, 3.0), (5, 20.0), (3, 8.0)])
def test_matches_densecrf_kernel(d, spread):
    # One mean-field step with a single kernel exposes densecrf's normalised filter:
    # log Q1 - log P = K̃P up to a per-pixel constant, which differencing against class 0 removes.
    dcrf = pytest.importorskip("pydensecrf.densecrf")
    n, c = 500, 3
    rng = np.random.default_rng(d)
    f = (rng.random((d, n)) * spread).astype(np.float32)
    p = (rng.random((c, n)) + 0.1).astype(np.float32)
    p /= p.sum(0)
    crf = dcrf.DenseCRF(n, c)
    crf.setUnaryEnergy(np.ascontiguousarray(-np.log(p)))
    crf.addPairwiseEnergy(np.ascontiguousarray(f), compat=1.0)
    q = np.array(crf.inference(1))
    ref = np.log(q) - np.log(p)
    ref -= ref[0]
    lat = PermutohedralLattice(torch.from_numpy(f.T.copy()))
    norm = lat.normalizer()
    ours = (norm[:, None] * lat.filter(torch.from_numpy(p.T.copy()) * norm[:, None])).numpy().T
    ours -= ours[0]
    np.testing.assert_allclose(ours, ref, atol=2e-5)


def test_image_like_features_with_ties_match_densecrf():
    # Quantised colours put many points exactly on simplex boundaries; densecrf's float rounding
    # decides which vertices they use and we must decide the same way.
    dcrf = pytest.importorskip("pydensecrf.densecrf")
    h, w, c = 30, 40, 2
    rng = np.random.default_rng(0)
    img = (rng.random((h, w, 3)) * 80).astype(np.uint8)
    p = (rng.random((c, h * w)) + 0.1).astype(np.float32)
    p /= p.sum(0)
    crf = dcrf.DenseCRF2D(w, h, c)
    crf.setUnaryEnergy(np.ascontiguousarray(-np.log(p)))
    crf.addPairwiseBilateral(sxy=7, srgb=13, rgbim=img, compat=1.0)
    ref = np.log(np.array(crf.inference(1))) - np.log(p)
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    feats = [xs / np.float32(7), ys / np.float32(7)] + [img[..., k].astype(np.float32) / np.float32(13)
                                                        for k in range(3)]
    lat = PermutohedralLattice(torch.from_numpy(np.stack(feats, -1).reshape(-1, 5)))
    norm = lat.normalizer()
    ours = (norm[:, None] * lat.filter(torch.from_numpy(p.T.copy()) * norm[:, None])).numpy().T
    np.testing.assert_allclose(ours[1] - ours[0], ref[1] - ref[0], atol=2e-5)


def test_rejects_bad_input():
    with pytest.raises(ValueError):
        PermutohedralLattice(torch.zeros(0, 2))
    with pytest.raises(ValueError):
        PermutohedralLattice(torch.zeros(5))
    lat = PermutohedralLattice(torch.zeros(4, 2))
    with pytest.raises(ValueError):
        lat.filter(torch.zeros(3, 1))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_lattice_matches_cpu():
    f = _features(2000, 5, 10.0, seed=4)
    x = torch.rand(2000, 4)
    cpu = PermutohedralLattice(f).filter(x)
    gpu = PermutohedralLattice(f.cuda()).filter(x.cuda()).cpu()
    torch.testing.assert_close(gpu, cpu, atol=1e-4, rtol=1e-4)


def test_torch_only_build_path_matches_numpy_path(monkeypatch):
    # CUDA builds the lattice with torch.sort/searchsorted instead of numpy; run that path on CPU.
    from engine.crf import lattice as lattice_mod

    f = _features(3000, 5, 12.0, seed=5)
    x = torch.rand(3000, 3)
    fast = PermutohedralLattice(f)
    monkeypatch.setattr(lattice_mod, "NUMPY_ON_CPU", False)
    portable = PermutohedralLattice(f)
    assert portable.n_vertices == fast.n_vertices
    torch.testing.assert_close(portable.filter(x), fast.filter(x), atol=1e-5, rtol=1e-5)


def _quantised_features(n, d, seed):
    # Coarse, partly negative values: many exact ties between elevated coordinates, and points whose
    # rounded remainder-0 vertex is off the plane (the rank wrap-around case).
    rng = np.random.default_rng(seed)
    return torch.from_numpy((np.round(rng.normal(0, 6, (n, d)) * 4) / 4).astype(np.float32))


@pytest.mark.parametrize("d", [1, 2, 3, 5])
def test_numpy_build_is_bit_identical_to_torch_build(monkeypatch, d):
    from engine.crf import lattice as lattice_mod

    f = _quantised_features(2500, d, seed=d)
    fast = PermutohedralLattice(f)
    monkeypatch.setattr(lattice_mod, "NUMPY_ON_CPU", False)
    ref = PermutohedralLattice(f)
    assert fast.n_vertices == ref.n_vertices
    assert torch.equal(fast._slice_idx.long(), ref._slice_idx.long())
    assert torch.equal(fast._slice_w, ref._slice_w)
    for a, b in zip(fast._blur_idx, ref._blur_idx):
        assert torch.equal(a.long(), b.long())
    # Splat groups may list a vertex's entries in another order; per vertex they are the same.
    x = torch.rand(2500, 2)
    torch.testing.assert_close(fast.splat(x), ref.splat(x), atol=1e-5, rtol=1e-6)


def test_simplex_keys_match_the_torch_simplex():
    from engine.crf import lattice_cpu
    from engine.crf.lattice import _simplex

    for d in (2, 5):
        f = _quantised_features(3000, d, seed=10 + d)
        lattice_cpu.BLOCK, saved = 700, lattice_cpu.BLOCK  # several blocks, a ragged last one
        try:
            mq, by_rank, bary = lattice_cpu.simplex_keys(f.numpy())
        finally:
            lattice_cpu.BLOCK = saved
        rem0, rank, bary_t = _simplex(f)
        assert np.array_equal(bary, bary_t.numpy())
        assert np.array_equal(mq.T, (rem0 // (d + 1)).numpy())
        # by_rank inverts rank: the coordinate of rank k has rank k.
        assert np.array_equal(np.take_along_axis(rank.numpy(), by_rank.T.astype(np.int64), 1),
                              np.broadcast_to(np.arange(d + 1), (3000, d + 1)))


def test_number_vertices_packed_and_argsort_paths_agree():
    from engine.crf import lattice_cpu

    rng = np.random.default_rng(3)
    codes = rng.integers(0, 50, size=600).astype(np.int64)  # many repeats, like shared vertices
    bary = rng.random((200, 3), dtype=np.float32)
    bits = 10
    packed = (codes << bits) + np.arange(600)
    a = lattice_cpu.number_vertices(packed, bits, 3, np.int32, bary)
    b = lattice_cpu.number_vertices(codes.copy(), 0, 3, np.int32, bary)
    for x, y in zip(a, b):
        assert np.array_equal(x, y)
    uniq, slice_idx, splat_idx, splat_w, bags = a
    assert np.array_equal(uniq, np.unique(codes))
    assert np.array_equal(uniq[slice_idx], codes)
    # Each vertex's bag lists exactly the points whose entries map to it.
    ends = np.append(bags[1:], 600)
    for v in (0, len(uniq) // 2, len(uniq) - 1):
        pts = np.sort(splat_idx[bags[v]:ends[v]])
        assert np.array_equal(pts, np.sort(np.flatnonzero(codes == uniq[v]) // 3))


def test_blur_pads_a_zero_row_and_keeps_shapes():
    lat = PermutohedralLattice(_features(200, 3, 5.0, seed=7))
    x = torch.rand(200, 4)
    padded = lat._splat(x)
    assert padded.shape == (lat.n_vertices + 1, 4) and (padded[-1] == 0).all()
    blurred = lat._blur(padded)
    assert (blurred[-1] == 0).all()
    torch.testing.assert_close(lat.blur(lat.splat(x)), blurred[:-1])
    torch.testing.assert_close(lat.slice(blurred), lat.filter(x))


def test_vertex_budget_stops_the_build_early():
    from engine.crf.lattice import LatticeTooLarge

    f = _quantised_features(2000, 5, seed=3)
    full = PermutohedralLattice(f)
    with pytest.raises(LatticeTooLarge) as err:
        PermutohedralLattice(f, max_vertices=full.n_vertices - 1)
    assert err.value.n_vertices == full.n_vertices
    fits = PermutohedralLattice(f, max_vertices=full.n_vertices)
    x = torch.rand(2000, 3)
    assert torch.equal(fits.filter(x), full.filter(x))
