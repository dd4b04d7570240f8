"""Duplicate images: exact copies, pixel-equal re-encodings, and perceptual near-duplicates.

Four kinds of match, strongest first (a pair is reported under the strongest kind only):

* ``exact``: the files have the same bytes (same SHA-1).
* ``pixel``: different bytes, same decoded pixels (e.g. a PNG saved again with another
  compression level, or a PNG and a BMP of one image); see :func:`toolkit.imaging.hashing.pixel_digest`.
* ``near``: the 64-bit perceptual hashes (:mod:`toolkit.imaging.phash`) differ in at most
  ``max_distance`` bits (resized, re-compressed, slightly cropped or retouched copies).
* ``near_flip``: one image's hash is within ``max_distance`` bits of the hash of the other
  image mirrored left-right (a horizontally flipped copy, a classic augmentation leak).

The search reads the table :func:`toolkit.imaging.hashing.image_hashes` makes (or ``clsctl eda``'s
``hashes.parquet``). An image without a perceptual hash (nearly uniform) only takes part in exact
and pixel matching.

Pairs are a graph, not a full list of all pairs: within a cluster of identical files (or
identical pixels, or identical hashes) every member is paired with the cluster's first path
(sorted), and near matches are searched between those representatives only. The connected
components of the pairs are exactly the duplicate groups (:func:`duplicate_groups`), and a
cluster of 1,000 identical blank images gives 999 pairs, not half a million.

The near search never builds an n×n matrix: hashes are cut into ``max_distance + 1`` bands, and
by the pigeonhole principle two hashes within ``max_distance`` bits agree exactly on at least one
band, so only hashes that share a band value are compared (sort by band value, compare
neighbours at growing offsets). When that would compare more candidates than a brute-force
search (tiny inputs, very skewed hashes, large distances), a chunked XOR + popcount over the
whole set is used instead. Memory stays linear in the number of images plus the pairs found.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from toolkit.errors import DataError, UsageError
from toolkit.imaging.hashing import HASH_COLUMNS
from toolkit.imaging.phash import HASH_BITS

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "DEFAULT_NEAR_DISTANCE",
    "PAIR_KINDS",
    "duplicate_groups",
    "duplicate_pairs",
    "hamming",
    "nearest_distances",
]

#: Default largest Hamming distance (of 64 bits) for a near duplicate. Measured on samples of the
#: shared datasets, JPEG re-encoding (quality 75) moves a hash by at most 4 bits, a 60 % resize by
#: 6 bits in 99 % of images, a 20 % brightness change by at most 6; a 4 % border crop already moves
#: it by 6-14. Distinct look-alike images (sketches of one pose on white) start at 2 bits and
#: become common above 6, so 6 keeps most true copies while limiting chance matches.
DEFAULT_NEAR_DISTANCE = 6

#: Values of the ``kind`` column of :func:`duplicate_pairs`, strongest first.
PAIR_KINDS = ("exact", "pixel", "near", "near_flip")

# Brute force compares at most this many hashes at once (rows × columns of one XOR block).
_BLOCK_ELEMENTS = 1 << 21


def hamming(a: Any, b: Any) -> Any:
    """Number of differing bits between 64-bit hashes (scalars or numpy arrays).

    Args:
        a: Hash or array of hashes.
        b: Hash or array of hashes (broadcast against ``a``).

    Returns:
        An int for two scalars, else an integer array.
    """
    x = np.bitwise_xor(np.asarray(a, dtype=np.uint64), np.asarray(b, dtype=np.uint64))
    out = _popcount(x)
    return int(out) if np.ndim(out) == 0 else out


_BYTE_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def _popcount(x: np.ndarray) -> np.ndarray:
    if hasattr(np, "bitwise_count"):  # numpy >= 2.0: one native instruction per element
        return np.bitwise_count(x)
    as_bytes = np.ascontiguousarray(x, dtype=np.uint64).view(np.uint8).reshape(*np.shape(x), 8)
    return _BYTE_POPCOUNT[as_bytes].sum(axis=-1, dtype=np.uint8)


# --------------------------------------------------------------------------- pair search


def _bands(max_distance: int) -> list[tuple[int, int]]:
    """``(shift, width)`` of ``max_distance + 1`` bands that together cover the 64 bits."""
    m = max_distance + 1
    widths = [HASH_BITS // m + (1 if i < HASH_BITS % m else 0) for i in range(m)]
    out, shift = [], 0
    for w in widths:
        out.append((shift, w))
        shift += w
    return out


def _band_keys(h: np.ndarray, shift: int, width: int) -> np.ndarray:
    mask = np.uint64((1 << width) - 1) if width < 64 else np.uint64(0xFFFFFFFFFFFFFFFF)
    return (h >> np.uint64(shift)) & mask


def _band_cost(values: np.ndarray, bands: list[tuple[int, int]]) -> float:
    """Candidate comparisons the band search would make (pairs sharing a band value)."""
    total = 0.0
    for shift, width in bands:
        _, counts = np.unique(_band_keys(values, shift, width), return_counts=True)
        total += float((counts.astype(np.float64) * (counts - 1)).sum() / 2)
    return total


def _near_indices(h: np.ndarray, g: np.ndarray | None, max_distance: int) -> tuple[np.ndarray, ...]:
    """Index pairs ``(i, j)`` with ``popcount(h[i] ^ x[j]) <= max_distance``.

    Self mode (``g`` None): ``x = h`` and ``i < j``. Cross mode: ``x = g`` and ``i != j``.

    Returns:
        ``(i, j, distance)`` arrays, each pair once.
    """
    n = len(h)
    empty = (np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.int64))
    if n < 2:
        return empty
    values = h if g is None else np.concatenate([h, g])
    bands = _bands(max_distance)
    n_pairs = n * (n - 1) / 2 if g is None else float(n) * n
    if n <= 2048 or _band_cost(values, bands) > 0.25 * n_pairs:
        i, j, d = _brute_force(h, g, max_distance)
    else:
        i, j, d = _band_search(h, g, values, bands, max_distance)
    if i.size == 0:
        return empty
    # A pair found in several bands appears several times: keep it once.
    key = i.astype(np.int64) * n + j.astype(np.int64)
    _, first = np.unique(key, return_index=True)
    return i[first], j[first], d[first]


def _brute_force(h: np.ndarray, g: np.ndarray | None, max_distance: int) -> tuple[np.ndarray, ...]:
    n = len(h)
    other = h if g is None else g
    rows = max(1, _BLOCK_ELEMENTS // n)
    found_i, found_j, found_d = [], [], []
    for start in range(0, n, rows):
        stop = min(n, start + rows)
        dist = _popcount(h[start:stop, None] ^ other[None, :])
        ii, jj = np.nonzero(dist <= max_distance)
        ii = ii + start
        keep = ii < jj if g is None else ii != jj
        ii, jj = ii[keep], jj[keep]
        found_i.append(ii)
        found_j.append(jj)
        found_d.append(dist[ii - start, jj].astype(np.int64))
    return np.concatenate(found_i), np.concatenate(found_j), np.concatenate(found_d)


def _band_search(h: np.ndarray, g: np.ndarray | None, values: np.ndarray,
                 bands: list[tuple[int, int]], max_distance: int) -> tuple[np.ndarray, ...]:
    n = len(h)
    total = len(values)
    found_i, found_j, found_d = [], [], []
    for shift, width in bands:
        keys = _band_keys(values, shift, width)
        order = np.argsort(keys, kind="stable")
        sorted_keys = keys[order]
        # Equal keys are contiguous after sorting. Compare each position with the one `offset`
        # further on; a position whose neighbour at `offset` has another key can have no equal
        # key further on, so it drops out. Work is linear in the candidates, memory in n.
        active = np.arange(total - 1)
        offset = 1
        while active.size:
            active = active[active + offset < total]
            active = active[sorted_keys[active] == sorted_keys[active + offset]]
            if not active.size:
                break
            x, y = order[active], order[active + offset]
            if g is None:
                i, j = np.minimum(x, y), np.maximum(x, y)
                d = _popcount(h[i] ^ h[j])
            else:
                # Keep pairs of one original hash (index < n) and one mirrored hash (>= n).
                mixed = (x < n) != (y < n)
                x, y = x[mixed], y[mixed]
                i, j = np.where(x < n, x, y), np.where(x < n, y, x) - n
                d = _popcount(h[i] ^ g[j])
                keep = i != j
                i, j, d = i[keep], j[keep], d[keep]
            hit = d <= max_distance
            found_i.append(i[hit])
            found_j.append(j[hit])
            found_d.append(d[hit].astype(np.int64))
            offset += 1
    if not found_i:
        return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.int64)
    return np.concatenate(found_i), np.concatenate(found_j), np.concatenate(found_d)


def _star_pairs(paths: np.ndarray, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pair every member of a cluster of equal keys with the cluster's first (sorted) path.

    ``paths`` must be sorted. Returns ``(first, other, is_representative)`` where the mask marks
    the first path of every cluster (and every path without a cluster).
    """
    import pandas as pd

    first = pd.Series(paths).groupby(pd.Series(keys), sort=False).transform("first").to_numpy(object)
    rep = first == paths
    return first[~rep], paths[~rep], rep


def duplicate_pairs(hashes_df: pd.DataFrame, max_distance: int = DEFAULT_NEAR_DISTANCE) -> pd.DataFrame:
    """Find exact, pixel-equal, near and mirrored near duplicates among hashed images.

    Args:
        hashes_df: A table with the columns of :func:`toolkit.imaging.hashing.image_hashes` (missing values allowed:
            rows without ``sha1`` / ``pixel_hash`` / ``phash`` skip that kind of match).
        max_distance: Largest Hamming distance (0..32 bits of 64) for ``near``/``near_flip``.

    Returns:
        Columns ``a`` and ``b`` (paths, ``a < b``), ``kind`` (``exact``, ``pixel``, ``near``,
        ``near_flip``) and ``distance`` (differing hash bits; 0 for exact and pixel), sorted by
        kind then paths. See the module docstring for which pairs are listed: their connected
        components are the duplicate groups.

    Raises:
        UsageError: ``max_distance`` outside 0..32.
        DataError: A required column is missing or paths repeat.
    """
    import pandas as pd

    if not 0 <= int(max_distance) <= 32:
        raise UsageError(f"near-duplicate distance {max_distance} is outside 0..32 bits",
                         "use a small distance such as the default "
                         f"{DEFAULT_NEAR_DISTANCE}; above 32 of 64 bits unrelated images match")
    max_distance = int(max_distance)
    missing = [c for c in HASH_COLUMNS if c not in hashes_df.columns]
    if missing:
        raise DataError(f"hash table lacks column(s) {', '.join(missing)}",
                        "build it with toolkit.imaging.hashing.image_hashes or read eda's hashes.parquet")
    df = hashes_df.loc[:, list(HASH_COLUMNS)].copy()
    df["path"] = df["path"].astype(str)
    if df["path"].duplicated().any():
        dup = df.loc[df["path"].duplicated(), "path"].iloc[0]
        raise DataError(f"hash table lists {dup!r} more than once", "hash each image once")
    df = df.sort_values("path", kind="stable").reset_index(drop=True)

    parts: list[pd.DataFrame] = []

    def add(a: np.ndarray, b: np.ndarray, kind: str, dist: np.ndarray | int) -> None:
        if len(a):
            lo = np.where(a < b, a, b)
            hi = np.where(a < b, b, a)
            parts.append(pd.DataFrame({"a": lo.astype(object), "b": hi.astype(object), "kind": kind,
                                       "distance": np.broadcast_to(np.asarray(dist, np.int64), len(a))}))

    # Exact: same bytes.
    cur = df[df["sha1"].notna()]
    a, b, rep = _star_pairs(cur["path"].to_numpy(object), cur["sha1"].to_numpy(object))
    add(a, b, "exact", 0)
    # Pixel: among one file per byte-cluster (plus files without sha1), same decoded pixels.
    keep = df["sha1"].isna().to_numpy().copy()
    keep[np.flatnonzero(df["sha1"].notna().to_numpy())[rep]] = True
    cur = df[keep & df["pixel_hash"].notna().to_numpy()]
    a, b, rep = _star_pairs(cur["path"].to_numpy(object), cur["pixel_hash"].to_numpy(object))
    add(a, b, "pixel", 0)
    # Near: among one image per pixel-cluster, identical hashes first, then the band search.
    cur = cur[rep]
    cur = cur[cur["phash"].notna().to_numpy()]
    if len(cur):
        phash = cur["phash"].to_numpy(np.uint64)
        a, b, rep = _star_pairs(cur["path"].to_numpy(object), phash)
        add(a, b, "near", 0)
        cur = cur[rep]
        paths = cur["path"].to_numpy(object)
        h = cur["phash"].to_numpy(np.uint64)
        g = cur["phash_flip"].to_numpy(np.uint64)
        i, j, d = _near_indices(h, None, max_distance)
        add(paths[i], paths[j], "near", d)
        fi, fj, fd = _near_indices(h, g, max_distance)
        if fi.size:
            # A mirrored pair is found from both sides (h_i~g_j and h_j~g_i): keep the closer one,
            # and drop pairs that already match unmirrored. Pairs are compared as i * n + j keys.
            n = len(h)
            key = np.minimum(fi, fj) * n + np.maximum(fi, fj)
            order = np.lexsort((fd, key))
            key, fd = key[order], fd[order]
            first = np.ones(key.size, bool)
            first[1:] = key[1:] != key[:-1]
            key, fd = key[first], fd[first]
            fresh = ~np.isin(key, i.astype(np.int64) * n + j)
            key, fd = key[fresh], fd[fresh]
            add(paths[key // n], paths[key % n], "near_flip", fd)

    if not parts:
        return pd.DataFrame({"a": pd.Series(dtype=object), "b": pd.Series(dtype=object),
                             "kind": pd.Series(dtype=object), "distance": pd.Series(dtype=np.int64)})
    out = pd.concat(parts, ignore_index=True)
    rank = out["kind"].map({k: n for n, k in enumerate(PAIR_KINDS)})
    out = out.assign(_rank=rank).sort_values(["_rank", "a", "b"], kind="stable").drop(columns="_rank")
    return out.reset_index(drop=True)


def duplicate_groups(pairs: pd.DataFrame) -> dict[str, int]:
    """Connected components of a pair table: which duplicate group each paired path is in.

    Args:
        pairs: Output of :func:`duplicate_pairs` (columns ``a`` and ``b``).

    Returns:
        ``{path: group number}`` for every path that occurs in a pair; groups are numbered
        0, 1, ... in order of their first (sorted) path. Unpaired images are not listed.
    """
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        root = x
        while parent[root] != root:
            root = parent[root]
        while parent[x] != root:  # path compression keeps later finds short
            parent[x], x = root, parent[x]
        return root

    for a, b in zip(pairs["a"].astype(str), pairs["b"].astype(str), strict=True):
        parent.setdefault(a, a)
        parent.setdefault(b, b)
        ra, rb = find(a), find(b)
        if ra != rb:
            # The smaller path becomes the root, so numbering does not depend on pair order.
            parent[max(ra, rb)] = min(ra, rb)
    roots = sorted({find(p) for p in parent})
    number = {r: k for k, r in enumerate(roots)}
    return {p: number[find(p)] for p in sorted(parent)}


def nearest_distances(phash: np.ndarray, phash_flip: np.ndarray, seed: int | None = None,
                      limit: int = 2000) -> np.ndarray:
    """Hash distance from a sample of images to their nearest other image, plain or mirrored.

    Shows where true copies (a few bits) part from the bulk of distinct images, which is how a
    near-duplicate distance is chosen.

    Args:
        phash: ``uint64`` perceptual hashes, one per image (no missing values).
        phash_flip: The hashes of the same images mirrored left-right.
        seed: Seed of the sample (None: seed 0).
        limit: Largest sample.

    Returns:
        One distance (bits) per sampled image, in the order of their indices; empty for fewer
        than two images.
    """
    h, g = phash, phash_flip
    n = len(h)
    if n < 2:
        return np.empty(0, np.int64)
    rng = np.random.default_rng(0 if seed is None else seed)
    sample = np.sort(rng.choice(n, size=min(n, limit), replace=False))
    out = np.empty(len(sample), np.int64)
    block = max(1, (1 << 20) // n)
    for start in range(0, len(sample), block):
        rows = sample[start:start + block]
        d = np.minimum(_popcount(h[rows, None] ^ h[None, :]), _popcount(h[rows, None] ^ g[None, :]))
        d = d.astype(np.int64)
        d[np.arange(len(rows)), rows] = 99  # not itself
        out[start:start + len(rows)] = d.min(axis=1)
    return out
