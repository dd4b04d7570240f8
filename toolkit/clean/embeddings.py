"""Frozen-backbone embeddings of images for ``clean --quick``, cached on disk.

Each image becomes the pooled head features of the image and of its mirror image, averaged, followed by
the pooled feature maps of the backbone's last two stages. Embeddings are cached one ``.npy`` per image
under ``<cache>/<model key>/``; the model key covers everything that decides the numbers (backbone,
weights, image size, preprocessing, timm version, the feature layout), the file name covers the image
(resolved path, size, modification and change time, inode), and ``meta.json`` records how many leading numbers are the
head's. A second call on the same data reads the cache and never builds the model.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from toolkit.errors import DataError
from toolkit.imaging.cache import file_identity
from toolkit.progress import Progress, as_progress

if TYPE_CHECKING:
    from toolkit.data.preprocessing import Preprocessing

__all__ = ["CACHE_FORMAT", "RESIZE", "Embeddings", "default_embedding_cache", "embed_images", "l2_normalize",
           "model_key"]

# Bump when the embedding pipeline changes in a way the key does not see. 2: head features averaged
# with the mirror image's, then the last two stages' pooled maps.
CACHE_FORMAT = 2
# The whole image reaches the backbone: a label can hinge on an object near the border, which a
# center crop would cut off; it is also how the trainer resizes by default.
RESIZE = "stretch"


def default_embedding_cache() -> Path:
    """``$CLSCTL_CACHE/embeddings`` (beside the decoded-image cache)."""
    from toolkit.imaging.cache import default_cache_root

    return default_cache_root().parent / "embeddings"


def _file_identity(path: str | os.PathLike[str]) -> str:
    try:
        st = os.stat(path)
    except OSError:
        # No entry is ever written under this key: building the model raises the missing-file error.
        return f"{os.path.abspath(path)}\0missing"
    return f"{os.path.realpath(path)}\0{file_identity(st)}"


def model_key(backbone: str, *, pretrained: bool, pretrained_file: str | os.PathLike[str] | None,
              image_size: int, seed: int = 0) -> str:
    """The part of the cache key that names the embedding function (not the image).

    It covers the backbone name, where its weights come from (a local file by path, size and
    modification time; the hub by name; a random initialisation by seed), the image size and
    resize, and the timm version (a bare name's default pretrained tag, and the architecture, may
    change with it).
    """
    import timm

    if pretrained_file:
        weights = "file\0" + _file_identity(pretrained_file)
    elif pretrained:
        weights = "hub"
    else:
        weights = f"random\0{seed}"
    text = json.dumps({"format": CACHE_FORMAT, "backbone": backbone, "weights": weights, "size": int(image_size),
                       "resize": RESIZE, "timm": timm.__version__}, sort_keys=True)
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


def _entry(folder: Path, path: str) -> Path:
    # The decoded-image cache's notion of a file version: a same-size replacement whose times were put
    # back is a new entry, not the old image's embedding.
    key = hashlib.blake2b(f"{os.path.realpath(path)}\0{file_identity(os.stat(path))}".encode(),
                          digest_size=16).hexdigest()
    return folder / key[:2] / f"{key}.npy"


def _read_entry(entry: Path) -> np.ndarray | None:
    try:
        array = np.load(entry, allow_pickle=False)
    except (FileNotFoundError, ValueError, EOFError, OSError):
        return None  # missing, or torn by a crash: computed again
    return array if array.ndim == 1 and array.dtype == np.float32 else None


def _write_entry(entry: Path, vector: np.ndarray) -> None:
    from toolkit.store.atomic import atomic_write_bytes

    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(vector, dtype=np.float32), allow_pickle=False)
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(entry, buffer.getvalue())
    except OSError:
        pass  # a full or read-only disk costs the next call a recomputation, not this one its result


@dataclass
class Embeddings:
    """What :func:`embed_images` returns.

    Attributes:
        vectors: ``float32 [N, D]`` features (not normalised): the head's pooled features averaged with
            the mirror image's, then the last two stages' pooled feature maps.
        head_dims: How many leading columns are the head's features.
        computed: Images run through the backbone (the rest came from the cache).
    """

    vectors: np.ndarray
    head_dims: int
    computed: int


def embed_images(paths: Sequence[str], *, backbone: str = "tf_efficientnet_lite0", pretrained: bool = True,
                 pretrained_file: str | os.PathLike[str] | None = None, image_size: int = 224, seed: int = 0,
                 batch_size: int = 64, workers: int | None = None, cache_dir: str | os.PathLike[str] | None = None,
                 progress: Progress | bool | None = None) -> Embeddings:
    """Backbone features of images, from the cache where it has them.

    Args:
        paths: Image files.
        backbone, pretrained, pretrained_file, image_size, seed: The embedding function; see
            :func:`quick_probabilities`.
        batch_size: Images per forward pass.
        workers: Data-loader workers.
        cache_dir: The embedding cache (default :func:`default_embedding_cache`).
        progress: Where progress goes.
    """
    out = as_progress(progress)
    folder = Path(cache_dir).expanduser() if cache_dir else default_embedding_cache()
    folder = folder / model_key(backbone, pretrained=pretrained, pretrained_file=pretrained_file,
                                image_size=image_size, seed=seed)
    head_dims = _read_head_dims(folder)
    unique = list(dict.fromkeys(paths))
    found: dict[str, np.ndarray] = {}
    entries: dict[str, Path] = {}
    for path in unique:
        try:
            entries[path] = _entry(folder, path)
        except OSError:
            continue  # missing file: the loader raises its ImageError when it is read
        vector = _read_entry(entries[path]) if head_dims is not None else None
        if vector is not None:
            found[path] = vector
    todo = [p for p in unique if p not in found]
    bar = out.task("embed", len(unique), every=max(1, batch_size) * 10)
    try:
        bar.advance(len(found))
        if todo:
            out.log(f"embedding {len(todo)} image(s) with `{backbone}` at {image_size} px "
                    f"({len(found)} from the cache)")
            fresh, head_dims = _run_backbone(todo, backbone=backbone, pretrained=pretrained,
                                             pretrained_file=pretrained_file, image_size=image_size, seed=seed,
                                             batch_size=batch_size, workers=workers, bar=bar)
            _write_head_dims(folder, head_dims)
            for path, vector in zip(todo, fresh, strict=True):
                found[path] = vector
                if path in entries:
                    _write_entry(entries[path], vector)
    finally:
        bar.close()
    dims = {v.shape[0] for v in found.values()}
    if len(dims) > 1:  # a cache shared with another timm build that changed the architecture
        raise DataError(f"the embedding cache {folder} holds features of different sizes ({sorted(dims)})",
                        "delete that folder and run again")
    assert head_dims is not None  # read from the cache, or set by the backbone run
    return Embeddings(np.stack([found[p] for p in paths]).astype(np.float32, copy=False), head_dims, len(todo))


def _read_head_dims(folder: Path) -> int | None:
    try:
        value = json.loads((folder / "meta.json").read_text(encoding="utf-8")).get("head_dims")
    except (OSError, ValueError, AttributeError):
        return None  # no record: every entry of this folder is recomputed
    return int(value) if isinstance(value, int) and value > 0 else None


def _write_head_dims(folder: Path, head_dims: int) -> None:
    from toolkit.store.atomic import atomic_write_json

    try:
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_json(folder / "meta.json", {"head_dims": int(head_dims)})
    except OSError:
        pass  # as for the entries: a disk that refuses costs a recomputation later


def _quick_preprocessing(model: Any, image_size: int) -> Preprocessing:
    from toolkit.data.preprocessing import Preprocessing
    from toolkit.models import model_data_config

    cfg = model_data_config(model)
    return Preprocessing(image_size=image_size, eval_size=image_size, resize=RESIZE, crop_pct=1.0,
                         mean=tuple(float(m) for m in cfg["mean"]), std=tuple(float(s) for s in cfg["std"]))


def _run_backbone(paths: Sequence[str], *, backbone: str, pretrained: bool,
                  pretrained_file: str | os.PathLike[str] | None, image_size: int, seed: int, batch_size: int,
                  workers: int | None, bar: Any) -> tuple[np.ndarray, int]:
    import torch

    from toolkit.config.schema import ModelConfig
    from toolkit.data.dataset import BatchNormalize, ImageDataset
    from toolkit.data.transforms import eval_pipeline
    from toolkit.models import create_model
    from toolkit.runtime import predict_loader_workers, single_threaded_worker, use_cpu

    cfg = ModelConfig(name=backbone, pretrained=pretrained,
                      pretrained_file=os.fspath(Path(pretrained_file).expanduser()) if pretrained_file else None)
    # A random backbone is only reproducible, and so only cacheable, when its initialisation is seeded.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = create_model(cfg, 0)
    prep = _quick_preprocessing(model, image_size)
    device = torch.device("cpu" if use_cpu() else "cuda")
    model.eval().to(device, memory_format=torch.channels_last)
    # `workers` counts processes as for hashing: one means this process, with no loader process forked
    # (a fork after OpenCV's thread pool has run can deadlock the child when it resizes that pool).
    n_workers = 0 if workers is not None and workers <= 1 else predict_loader_workers(workers, 1, device.type)
    dataset = ImageDataset(paths, None, eval_pipeline(prep, to_tensor=False), loader=prep.image_loader())
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=max(1, int(batch_size)), shuffle=False, num_workers=n_workers,
        pin_memory=device.type == "cuda", worker_init_fn=single_threaded_worker if n_workers else None)
    normalize = BatchNormalize(prep.mean, prep.std, channels_last=True)
    chunks = []
    head_dims = 0
    with torch.inference_mode():
        for images, _, _ in loader:
            x = normalize(images, device)
            head, stages = _features(model, x)
            mirrored = model(torch.flip(x, dims=[3]))
            head_dims = head.shape[1]
            # float32 on every device: the cache does not record where an embedding was computed.
            chunks.append(torch.cat([(head + mirrored) / 2.0, *stages], dim=1).float().cpu().numpy())
            bar.advance(len(images))
    return np.concatenate(chunks).astype(np.float32, copy=False), head_dims


def _features(model: Any, x: Any) -> tuple[Any, list[Any]]:
    """The pooled head features of a batch and the pooled maps of the backbone's last two stages.

    One pass through timm's ``forward_intermediates`` gives both; a model without it gives its head
    features alone.
    """
    forward = getattr(model, "forward_intermediates", None)
    if forward is None:
        return model(x), []
    try:
        final, inter = forward(x, indices=2)
    except (TypeError, NotImplementedError, AssertionError, RuntimeError):
        return model(x), []
    # NCHW maps average over H and W; token sequences (NLC) over the tokens.
    stages = [t.mean(dim=(2, 3)) if t.ndim == 4 else t.mean(dim=1) for t in inter]
    return model.forward_head(final, pre_logits=True), stages


def l2_normalize(features: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (all-zero rows stay zero), as float32."""
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    return (features / np.maximum(norms, 1e-12)).astype(np.float32)
