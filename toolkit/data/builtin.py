"""Builtin datasets: small image sets that ship with an installed library, written once to the cache.

``data.root = "builtin:NAME"`` reads one as an ImageFolder (:func:`builtin_root` gives its folder).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from toolkit.data.listing import absolute_root
from toolkit.errors import DataError

__all__ = ["BUILTIN_DATASETS", "builtin_root", "default_cache_dir"]

#: Marker written last into a builtin dataset folder; its presence means the folder is complete.
#: Hidden (leading dot) so the folder listing never counts it as a stray file.
_COMPLETE_MARKER = ".clsctl-complete"


def default_cache_dir() -> Path:
    """The clsctl cache: ``$CLSCTL_CACHE`` if set, else ``~/.cache/clsctl``."""
    env = os.environ.get("CLSCTL_CACHE")
    return absolute_root(env) if env else Path.home() / ".cache" / "clsctl"


def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """The 1797 8×8 digits (values 0..16) and their classes, as scikit-learn ships them.

    The CSV inside the installed sklearn package is read directly because importing
    ``sklearn.datasets`` pulls in scipy and takes seconds; ``load_digits`` is the fallback
    should a future sklearn move the file.
    """
    import importlib.util

    spec = importlib.util.find_spec("sklearn")  # locates the package without importing it
    if spec is not None and spec.origin is not None:
        csv = Path(spec.origin).parent / "datasets" / "data" / "digits.csv.gz"
        if csv.is_file():
            table = np.loadtxt(csv, delimiter=",")
            if table.shape == (1797, 65):
                return table[:, :-1].reshape(-1, 8, 8), table[:, -1].astype(np.int64)
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:  # pragma: no cover - sklearn is a dependency
        raise DataError("builtin:digits needs scikit-learn", "install scikit-learn") from exc
    digits = load_digits()
    return digits.images, digits.target.astype(np.int64)


def _write_digits(target: Path) -> None:
    """scikit-learn's 1797 bundled 8×8 digits as 32×32 PNGs in ImageFolder layout.

    Pixel values 0..16 are scaled to 0..255 and kept white-on-black (like MNIST); upscaling is
    nearest-neighbour so the images stay exactly the original data, only bigger. Files are
    ``<digit>/<index:04d>.png`` with the index into sklearn's order.
    """
    from PIL import Image

    images, classes = _digits_arrays()
    pixels = np.rint(images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    for cls in range(10):
        (target / str(cls)).mkdir()
    for index, (img, cls) in enumerate(zip(pixels, classes, strict=True)):
        big = img.repeat(4, axis=0).repeat(4, axis=1)  # 8×8 → 32×32, nearest-neighbour
        Image.fromarray(big, mode="L").save(target / str(int(cls)) / f"{index:04d}.png")


#: Builtin dataset name → function that writes it (ImageFolder layout) into an empty folder.
BUILTIN_DATASETS: dict[str, Callable[[Path], None]] = {"digits": _write_digits}


def _materialize(final: Path, build: Callable[[Path], None]) -> Path:
    """Build a folder once, atomically: into a temp sibling, then ``os.replace`` it into place.

    A reader therefore sees either no folder or a complete one. Two processes may build at the
    same time; whichever renames second finds the folder present and discards its own copy.
    """
    marker = final / _COMPLETE_MARKER
    if marker.is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    # Hidden name: a half-built sibling never shows up in a listing of the parent.
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        build(tmp)
        (tmp / _COMPLETE_MARKER).write_text("complete\n", encoding="utf-8")
        try:
            os.replace(tmp, final)
        except OSError:
            if marker.is_file():
                return final  # another builder won the race; its copy is as good as ours
            # A folder without the marker is not ours (a manual copy or an old layout): replace it.
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def builtin_root(name: str, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The ImageFolder root of a builtin dataset, written to the cache on first use.

    Args:
        name: Dataset name without the ``builtin:`` prefix (``digits``).
        cache_dir: Cache folder; default ``$CLSCTL_CACHE`` or ``~/.cache/clsctl``. The dataset
            lives in ``<cache>/builtin/<name>``.

    Returns:
        The dataset folder (complete; a marker file records completion).

    Raises:
        DataError: Unknown name.
    """
    if name not in BUILTIN_DATASETS:
        raise DataError(f"unknown builtin dataset {name!r} (known: {', '.join(sorted(BUILTIN_DATASETS))})",
                        "use data.root = \"builtin:digits\", or point data.root at a folder")
    base = absolute_root(cache_dir) if cache_dir is not None else default_cache_dir()
    return _materialize(base / "builtin" / name, BUILTIN_DATASETS[name])
