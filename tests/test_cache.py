"""The decoded-image cache: hits, misses, invalidation, sizes, and agreement with direct decoding."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest
from PIL import Image

from toolkit.config import load_recipe
from toolkit.data.preprocessing import Preprocessing, make_image_loader
from toolkit.imaging.cache import DecodedImageCache
from toolkit.imaging.decode import load_image_array


def _png(path, w, h, value=None, seed=0):
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 255, (h, w, 3), dtype=np.uint8) if value is None else np.full((h, w, 3), value, np.uint8)
    Image.fromarray(pixels).save(path)
    return path


@pytest.mark.parametrize("ram_mb", [0, 16])
def test_hit_miss_and_invalidation(tmp_path, ram_mb):
    src = _png(tmp_path / "a.png", 40, 30)
    cache = DecodedImageCache(tmp_path / "cache", short_side=64, ram_mb=ram_mb)
    first = cache.load(src)
    assert (cache.hits, cache.misses) == (0, 1)
    np.testing.assert_array_equal(first, load_image_array(src))  # smaller than 64: stored as is
    again = cache.load(src)
    assert (cache.hits, cache.misses) == (1, 1)
    np.testing.assert_array_equal(again, first)

    # Replace the file with other pixels (and a later mtime): the old entry must not be served.
    time.sleep(0.01)
    _png(src, 40, 30, value=7)
    os.utime(src, ns=(time.time_ns(), time.time_ns()))
    changed = cache.load(src)
    assert cache.misses == 2 and (changed == 7).all()


def test_downscales_keeping_aspect_never_upscales(tmp_path):
    big = _png(tmp_path / "big.png", 400, 200)
    small = _png(tmp_path / "small.png", 20, 10)
    cache = DecodedImageCache(tmp_path / "cache", short_side=50)
    assert cache.load(big).shape == (50, 100, 3)
    assert cache.load(small).shape == (10, 20, 3)


def test_torn_entry_is_rebuilt(tmp_path):
    src = _png(tmp_path / "a.png", 16, 16)
    cache = DecodedImageCache(tmp_path / "cache", short_side=32)
    cache.load(src)
    entry = cache.entry(src)
    entry.write_bytes(entry.read_bytes()[:20])  # a crash mid-write of an older, non-atomic writer
    np.testing.assert_array_equal(cache.load(src), load_image_array(src))
    assert cache.misses == 2


def cache_side(recipe) -> int:
    return Preprocessing.from_recipe(recipe, mean=(0.0,), std=(1.0,)).cache_side


def test_needed_side_follows_the_recipe():
    assert cache_side(load_recipe(None, ["data.image_size=64"])) == 64
    assert cache_side(load_recipe(None, ["data.image_size=64", "data.eval_size=96"])) == 96
    assert cache_side(load_recipe(None, ["data.image_size=224", "aug.resize=\"center_crop\"", "aug.crop_pct=0.875"])) == 256
    rrc = load_recipe(None, ["data.image_size=100", "aug.resize=\"random_resized_crop\"", "aug.scale=[0.25, 1.0]"])
    assert cache_side(rrc) == 200


def test_loader_choice(tmp_path, monkeypatch):
    monkeypatch.setenv("CLSCTL_CACHE", str(tmp_path / "c"))
    loader = make_image_loader(load_recipe(None, ["data.image_size=32"]))
    assert isinstance(loader, DecodedImageCache) and str(loader.root).startswith(str(tmp_path / "c"))
    assert make_image_loader(load_recipe(None, ["data.cache=false"])) is load_image_array


@pytest.mark.parametrize("workers", [2])
def test_concurrent_writers_agree(tmp_path, workers):
    from concurrent.futures import ProcessPoolExecutor

    paths = [str(_png(tmp_path / f"{i}.png", 64, 48, seed=i)) for i in range(20)]
    cache = DecodedImageCache(tmp_path / "cache", short_side=24)
    with ProcessPoolExecutor(workers) as pool:
        results = list(pool.map(cache.load, paths * 3))
    for path, arr in zip(paths * 3, results, strict=True):
        np.testing.assert_array_equal(arr, cache.decode(path))
    assert not list((tmp_path / "cache").rglob(".*.tmp"))


def test_memory_tier_skips_the_disk_and_keeps_to_its_budget(tmp_path):
    srcs = [_png(tmp_path / f"{i}.png", 40, 30, value=i) for i in range(4)]
    one = 40 * 30 * 3
    cache = DecodedImageCache(tmp_path / "cache", short_side=64, ram_mb=2.5 * one / 2**20)  # room for two
    for src in srcs:
        cache.load(src)
    assert cache.ram_bytes == 2 * one and cache.misses == 4
    for entry in (tmp_path / "cache").rglob("*.npy"):
        entry.unlink()  # only the two held in memory can still be served without a decode
    for src in srcs[:2]:
        held = cache.load(src)
        assert not held.flags.writeable and (held == int(src.stem)).all()
    assert cache.misses == 4
    cache.load(srcs[3])
    assert cache.misses == 5


def test_missing_file_gives_the_loaders_error(tmp_path):
    from toolkit.errors import ImageError

    cache = DecodedImageCache(tmp_path / "cache", short_side=32, ram_mb=8)
    with pytest.raises(ImageError, match="nope.png"):
        cache.load(tmp_path / "nope.png")


def test_warm_decodes_what_is_missing_on_several_processes(tmp_path):
    from toolkit.imaging.cache import warm_cache

    paths = [_png(tmp_path / f"{i}.png", 30 + i % 7, 20 + i % 5, seed=i) for i in range(80)]
    broken = tmp_path / "broken.png"
    broken.write_bytes(paths[0].read_bytes()[:60])  # a valid header, truncated pixel data
    cache = DecodedImageCache(tmp_path / "cache", short_side=24)
    cache.load(paths[0])  # one entry exists already

    told = []
    result = warm_cache(cache, [*paths, paths[1], broken], processes=2, chunk=16,
                        on_start=lambda missing, procs: told.append((missing, procs)))
    assert (result.decoded, result.already, result.processes) == (79, 1, 2)
    assert told == [(80, 2)]  # 79 to decode and the broken file
    assert [p for p, _ in result.errors] == [str(broken)] and result.errors[0][1]
    assert all(cache.has(p) for p in paths) and not cache.has(broken)
    fresh = DecodedImageCache(tmp_path / "cache", short_side=24)
    for p in paths[::9]:  # the entries the pool wrote are the arrays a direct decode gives
        np.testing.assert_array_equal(fresh.load(p), DecodedImageCache(tmp_path / "other", short_side=24).decode(p))
    assert fresh.misses == 0

    again = warm_cache(cache, paths, processes=2)
    assert (again.decoded, again.already, again.processes) == (0, 80, 0)


def test_warm_stays_in_process_for_few_images_or_one_core(tmp_path):
    from toolkit.imaging.cache import warm_cache

    paths = [_png(tmp_path / f"{i}.png", 20, 20, seed=i) for i in range(10)]
    # Fewer than min_missing, or one process: decoded here, no pool (every bad file is still found before training).
    few = warm_cache(DecodedImageCache(tmp_path / "few", short_side=24), paths, processes=2)
    assert (few.decoded, few.processes) == (10, 0)
    one = warm_cache(DecodedImageCache(tmp_path / "one", short_side=24), paths, processes=1, min_missing=1)
    assert (one.decoded, one.processes) == (10, 0)
    result = warm_cache(DecodedImageCache(tmp_path / "cache", short_side=24), paths, processes=2, min_missing=1,
                        chunk=4)
    assert (result.decoded, result.processes) == (10, 2)


def _folder_bytes(root) -> int:
    return sum(p.stat().st_size for p in root.rglob("*.npy") if not p.name.startswith("."))


def test_disk_budget_is_never_exceeded_and_evicts_the_least_recently_used(tmp_path):
    srcs = [_png(tmp_path / f"{i}.png", 32, 32, seed=i) for i in range(60)]
    entry = 32 * 32 * 3 + 128  # pixels and the .npy header
    budget = 25 * entry
    cache = DecodedImageCache(tmp_path / "cache", short_side=32, disk_gb=budget / 2**30)
    for src in srcs:
        cache.load(src)
        assert _folder_bytes(tmp_path / "cache") <= budget
    assert cache.evicted >= 35 and cache.misses == 60

    # Last use decides, not first write. File times are coarse, so ages are set explicitly: the entry
    # written first and unused longest is read once more, and must then be the one that survives.
    kept = [s for s in srcs if cache.has(s)]
    now = time.time_ns()
    for rank, src in enumerate(kept):
        past = now - (len(kept) - rank) * 10**9
        os.utime(cache.entry(src), ns=(past, past))
    cache.load(kept[0])
    assert cache.misses == 60
    left = cache.enforce_budget(reserve=int(budget * 0.9) - entry)  # room for one entry
    assert left == entry and cache.has(kept[0]) and not any(cache.has(s) for s in kept[1:])


def test_disk_budget_holds_for_the_warm_up_pool_and_the_recipe_key(tmp_path, monkeypatch):
    from toolkit.errors import RecipeError
    from toolkit.imaging.cache import warm_cache

    srcs = [_png(tmp_path / f"{i}.png", 24, 24, seed=i) for i in range(80)]
    budget = 30 * (24 * 24 * 3 + 128)
    cache = DecodedImageCache(tmp_path / "cache", short_side=24, disk_gb=budget / 2**30)
    result = warm_cache(cache, srcs, processes=2, min_missing=1, chunk=8)
    assert result.processes == 2 and result.decoded == 80 and not result.errors
    assert 0 < _folder_bytes(tmp_path / "cache") <= budget

    monkeypatch.setenv("CLSCTL_CACHE", str(tmp_path / "c"))
    loader = make_image_loader(load_recipe(None, ["data.image_size=32", "data.cache_disk_gb=1.5"]))
    assert isinstance(loader, DecodedImageCache) and loader.disk_budget == int(1.5 * 2**30)
    assert make_image_loader(load_recipe(None, ["data.image_size=32"])).disk_budget is None
    with pytest.raises(RecipeError, match="cache_disk_gb"):
        load_recipe(None, ["data.cache_disk_gb=0"])


def test_budget_counts_live_temporary_files_and_removes_those_killed_writers_left(tmp_path):
    from toolkit.imaging.cache import STALE_TEMP_SECONDS, cache_usage

    srcs = [_png(tmp_path / f"{i}.png", 32, 32, seed=i) for i in range(4)]
    entry = 32 * 32 * 3 + 128
    cache = DecodedImageCache(tmp_path / "cache", short_side=32, disk_gb=100 * entry / 2**30)
    for src in srcs:
        cache.load(src)
    shard = cache.entry(srcs[0]).parent
    stale, live = shard / f".{'a' * 32}.npy.999999.tmp", shard / f".{'b' * 32}.npy.999998.tmp"
    stale.write_bytes(b"\0" * 40 * entry)  # a writer killed mid-write long ago
    live.write_bytes(b"\0" * 30 * entry)  # one writing now
    old = time.time_ns() - (STALE_TEMP_SECONDS + 60) * 10**9
    os.utime(stale, ns=(old, old))
    assert len(cache_usage(tmp_path / "cache")) == 4 and not stale.exists() and live.exists()
    # the live temporary file takes its room: of the low-water mark (90 entries) less the 58 reserved, 30
    # are taken by it, and two of the four entries must go
    assert cache.enforce_budget(reserve=58 * entry) == 30 * entry + 2 * entry
    assert sum(cache.has(s) for s in srcs) == 2 and live.exists()


def test_an_image_larger_than_the_budget_is_returned_but_not_written(tmp_path):
    small, big = _png(tmp_path / "small.png", 16, 16, seed=1), _png(tmp_path / "big.png", 64, 64, seed=2)
    budget = 2 * (64 * 64 * 3)  # room for the big one alone, but not under the low-water mark with others
    cache = DecodedImageCache(tmp_path / "cache", short_side=64, disk_gb=budget * 0.4 / 2**30)
    cache.load(small)
    np.testing.assert_array_equal(cache.load(big), load_image_array(big))
    assert cache.too_large == 1 and not cache.has(big) and cache.has(small)
    assert not list((tmp_path / "cache").rglob(".*.tmp"))
    cache.load(big)  # decoded again each time, never stored
    assert cache.misses == 3 and cache.too_large == 2
