"""CPU (numpy) build of the permutohedral lattice's keys, barycentric weights and blur neighbours.

Same arithmetic as the torch path in ``lattice.py`` (densecrf's float32 elevation order, the rounded
scale factors, round-half-even, its rank tie-breaking), organised for a CPU: points are processed in
blocks small enough that the ~100 elementwise passes over each block stay in cache, ranks are int8,
and nothing is allocated per pass except the few block temporaries. On a 2-core machine this is many
times faster than the same passes as whole-array torch ops, which are bound by memory traffic, page
faults of fresh allocations and thread hand-offs when the other core is busy.
"""
from __future__ import annotations

import math

import numpy as np

__all__ = ["simplex_keys", "vertex_keys", "number_vertices", "blur_neighbours", "BLOCK"]

# Points per block: (d+1)·BLOCK float32/int64 temporaries stay within a core's L2 cache.
BLOCK = 16384


def _scales(d: int) -> np.ndarray:
    # densecrf stores inv_std_dev as a float, then scales in double and rounds to float.
    inv_std = float(np.float32(math.sqrt(2.0 / 3.0) * (d + 1)))
    return np.array([1.0 / math.sqrt((i + 2) * (i + 1)) * inv_std for i in range(d)], dtype=np.float32)


def simplex_keys(feats: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Enclosing simplex of every point.

    Args:
        feats: (n, d) float32 scaled features.
    Returns:
        mq (d, n) int32: floor(rem0_i / (d+1)) for the first d coordinates of the remainder-0 vertex;
        by_rank (d+1, n) int8: which coordinate holds rank k (d stands for the implicit last one);
        bary (n, d+1) float32 barycentric weights indexed by simplex corner.
    """
    n, d = feats.shape
    d1 = d + 1
    scale = _scales(d)[:, None]
    down = np.float32(1.0 / d1)
    mq = np.empty((d, n), dtype=np.int32)
    by_rank = np.empty((d1, n), dtype=np.int8)
    bary = np.empty((n, d1), dtype=np.float32)
    coord = np.arange(d1, dtype=np.int8)[:, None]
    for start in range(0, n, BLOCK):
        stop = min(start + BLOCK, n)
        p = stop - start
        cf = feats[start:stop].T * scale  # (d, p) float32
        # Elevation, accumulated one coordinate at a time in float32 in densecrf's order; multiply and
        # subtract are separate roundings, like densecrf (no fused multiply-add).
        el = np.empty((d1, p), dtype=np.float32)
        sm = np.zeros(p, dtype=np.float32)
        for j in range(d, 0, -1):
            np.multiply(cf[j - 1], np.float32(j), out=el[j])
            np.subtract(sm, el[j], out=el[j])
            sm += cf[j - 1]
        el[0] = sm
        v = np.rint(el * down)  # round-half-even, as densecrf's SSE path
        total = v.sum(0).astype(np.int8)  # exact: few small integers summing to about 0
        rem0 = v * np.float32(d1)
        diff = el - rem0
        # rank[i] = #coordinates ahead of i in decreasing order of diff; ties put the lower index ahead.
        rank = np.empty((d1, p), dtype=np.int8)
        rank[:] = total
        behind = np.empty(p, dtype=bool)
        ahead = np.empty(p, dtype=bool)
        for i in range(d):
            for j in range(i + 1, d1):
                np.less(diff[i], diff[j], out=behind)
                np.logical_not(behind, out=ahead)
                rank[i] += behind.view(np.int8)  # same-type adds: no casting loop
                rank[j] += ahead.view(np.int8)
        # Points off the plane Σ = 0 come back by wrapping ranks (and rem0) by d+1.
        wrap = (rank < 0).view(np.int8) - (rank > d).view(np.int8)
        rank += wrap * np.int8(d1)
        rem0 += wrap.astype(np.float32) * np.float32(d1)
        vb = el
        vb -= rem0
        vb *= down
        # Invert the rank permutation once; the weights and the codes both read coordinates by rank.
        flat = rank.astype(np.intp)
        flat *= p
        flat += np.arange(p)
        inv = np.empty((d1, p), dtype=np.int8)
        inv.reshape(-1)[flat] = np.broadcast_to(coord, (d1, p))
        vs = np.empty((d1, p), dtype=np.float32)
        vs.reshape(-1)[flat] = vb
        # Corner k weight: vb of rank d-k minus vb of rank d-k+1; corner 0 also takes 1 - vb of rank 0
        # (the same two float operations densecrf's barycentric loop does).
        w = np.empty((d1, p), dtype=np.float32)
        np.subtract(vs[d - 1::-1], vs[:0:-1], out=w[1:])
        np.subtract(np.float32(1.0), vs[0], out=w[0])
        w[0] += vs[d]
        bary[start:stop] = w.T
        by_rank[:, start:stop] = inv
        # rem0/(d+1) = v + wrap exactly.
        np.add(v[:d], wrap[:d], out=mq[:, start:stop], casting="unsafe")
    return mq, by_rank, bary


def vertex_keys(mq: np.ndarray, by_rank: np.ndarray, base: np.ndarray, strides: list[int],
                big: int) -> tuple[np.ndarray, int]:
    """(n*(d+1),) int64 sort keys for every (point, corner) entry, point-major, and the number of low
    bits that hold the entry's position (0 when code and position do not fit in 63 bits together).

    The vertex code is code_r = r·R + Σ_i (mq_i - base_i)·stride_i - S_r, S_r the strides of the
    coordinates ranked above d-r (see ``PermutohedralLattice``); it lies in [0, (d+1)·R) because
    mq_i - base_i >= 2 > 1. Keys are (code << bits) + position, so that one plain sort (several times
    faster than an argsort) both groups entries by vertex and gives the permutation.
    """
    d, n = mq.shape
    d1 = d + 1
    bits = max((n * d1 - 1).bit_length(), 1)
    if (d1 * big - 1).bit_length() + bits > 63:
        bits = 0
    stride_ext = np.array(list(strides) + [0], dtype=np.int64)
    keys = np.empty((n, d1), dtype=np.int64)
    for start in range(0, n, BLOCK):
        stop = min(start + BLOCK, n)
        code = np.zeros(stop - start, dtype=np.int64)
        for i in range(d):
            q = mq[i, start:stop] - np.int32(base[i])  # in [0, radix_i): no int64 overflow below
            code += q.astype(np.int64) * stride_ext[i]
        entry = np.arange(start * d1, stop * d1, d1, dtype=np.int64)
        out = keys[start:stop].T
        inv = by_rank[:, start:stop]
        for r in range(d1):
            if r:
                code += big
                code -= stride_ext[inv[d1 - r]]
            np.left_shift(code, bits, out=out[r])
            if bits:
                out[r] += entry
                entry += 1
    return keys.reshape(-1), bits


def number_vertices(keys: np.ndarray, bits: int, corners: int, idx_dtype, bary: np.ndarray):
    """Number the distinct vertices and build the slice and splat index structures.

    Args:
        keys: from ``vertex_keys`` (sorted in place here); bary: (n, corners) float32.
    Returns:
        uniq (M,) int64 sorted distinct codes; slice_idx (n*corners,) vertex of each entry; splat_idx
        (n*corners,) point of each entry grouped by vertex; splat_w (n*corners,) float32 its weight;
        splat_bags (M,) start of each vertex's group.
    """
    n = keys.size
    if bits:
        keys.sort()
        order = keys & ((1 << bits) - 1)
        keys >>= bits
        ordered = keys
    else:
        order = np.argsort(keys, kind="stable")
        ordered = keys[order]
    first = np.empty(n, dtype=bool)
    first[0] = True
    np.not_equal(ordered[1:], ordered[:-1], out=first[1:])
    ids = np.cumsum(first, dtype=idx_dtype)
    ids -= 1
    slice_idx = np.empty(n, dtype=idx_dtype)
    slice_idx[order] = ids
    del ids
    uniq = ordered[first]
    splat_w = np.take(bary.reshape(-1), order)
    np.floor_divide(order, corners, out=order)
    return uniq, slice_idx, order.astype(idx_dtype), splat_w, np.flatnonzero(first).astype(idx_dtype)


def blur_neighbours(uniq: np.ndarray, strides: list[int], big: int, total: int, idx_dtype) -> list[np.ndarray]:
    """Per lattice direction j, ((M+1)*3,) bags (n1, n2, i) of each vertex i for v_i + (v_n1 + v_n2)/2,
    summed with weights (0.5, 0.5, 1) in that order; a missing neighbour, and every entry of the extra
    last row's bag, point at row M, which the lattice keeps at zero (densecrf's zero row).

    ``uniq`` (M,) sorted distinct codes.
    """
    m = uniq.size
    d = len(strides)
    nz = int(np.searchsorted(uniq, big))  # codes below R have remainder 0: a sorted prefix
    target = np.empty(m, dtype=np.int64)
    pairs = []
    for j in range(d + 1):
        step = strides[j] if j < d else 0
        np.add(uniq[:nz], d * big - total + step, out=target[:nz])
        np.add(uniq[nz:], step - big, out=target[nz:])
        # Both runs of targets are sorted, so the searches walk the table almost linearly.
        pos = np.searchsorted(uniq, target)
        np.minimum(pos, m - 1, out=pos)
        found = uniq[pos] == target
        pair = np.full((m + 1, 3), m, dtype=idx_dtype)
        pair[:m, 2] = np.arange(m, dtype=idx_dtype)
        src = np.flatnonzero(found)
        dst = pos[src]
        pair[src, 0] = dst
        # n2 is the inverse relation: if b = n1(a) then a = n2(b); no second search needed.
        pair[dst, 1] = src
        pairs.append(pair.reshape(-1))
    return pairs
