"""Augmentation from recipes: presets on every image mode, validation errors, sizes, seeding, preview."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from toolkit.config import load_recipe
from toolkit.data.dataset import ImageDataset
from toolkit.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    build_transform,
    list_presets,
    load_pipeline,
    pipeline_record,
    transform_from_spec,
)
from toolkit.errors import RecipeError
from toolkit.imaging.decode import load_image_array

MODES = ["1", "L", "LA", "P", "RGBA", "CMYK", "I;16", "RGB"]


def _image(path, mode):
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 255, (30, 41, 3), dtype=np.uint8))
    if mode == "I;16":
        img = Image.fromarray((rng.integers(0, 65535, (30, 41))).astype(np.uint16))
    elif mode == "P":
        img = rgb.convert("P")
    else:
        img = rgb.convert(mode)
    suffix = ".tif" if mode in ("CMYK", "I;16") else ".png"
    img.save(path.with_suffix(suffix))
    return path.with_suffix(suffix)


@pytest.mark.parametrize("preset", list_presets())
def test_every_preset_runs_on_every_mode(tmp_path, preset):
    recipe = load_recipe(None, [f'aug.preset="{preset}"', "data.image_size=24", "aug.transforms=[{name=\"CLAHE\", p=1.0}]"])
    train = build_transform(recipe, train=True, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    evaluate = build_transform(recipe, train=False, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    for mode in MODES:
        array = load_image_array(_image(tmp_path / f"img_{mode.replace(';', '')}", mode))
        array.flags.writeable = False  # as served by the decoded cache's in-memory tier
        for tf in (train, evaluate):
            out = tf(image=array)["image"]
            assert out.shape == (3, 24, 24) and out.dtype == torch.float32 and torch.isfinite(out).all(), (preset, mode)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"name": "CLAHX"}, "no transform `CLAHX` — did you mean `CLAHE`"),
        ({"name": "CLAHE", "clip": 2}, "CLAHE has no argument `clip`"),
        ({"name": "CLAHE", "p": 3}, "CLAHE(p=3) is invalid"),
        ({"p": 0.5}, "has no `name`"),
    ],
)
def test_transform_validation_names_the_problem(spec, message):
    with pytest.raises(RecipeError) as exc:
        transform_from_spec(spec, "aug.transforms[0]")
    assert message in str(exc.value) and "aug.transforms[0]" in str(exc.value)


def test_unknown_preset_and_randaugment_string():
    with pytest.raises(RecipeError, match="did you mean `light`"):
        build_transform(load_recipe(None, ['aug.preset="lite"']), train=True, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    with pytest.raises(RecipeError, match="aug.randaugment"):
        build_transform(load_recipe(None, ['aug.randaugment="rand-zz"']), train=True, mean=IMAGENET_MEAN, std=IMAGENET_STD)


@pytest.mark.parametrize("resize", ["stretch", "center_crop", "letterbox", "random_resized_crop"])
def test_resize_strategies_and_eval_size(resize):
    recipe = load_recipe(None, [f'aug.resize="{resize}"', "data.image_size=32", "data.eval_size=40", "aug.crop_pct=0.9"])
    image = np.random.default_rng(0).integers(0, 255, (60, 90, 3), dtype=np.uint8)
    assert build_transform(recipe, train=True, mean=IMAGENET_MEAN, std=IMAGENET_STD)(image=image)["image"].shape == (3, 32, 32)
    assert build_transform(recipe, train=False, mean=IMAGENET_MEAN, std=IMAGENET_STD)(image=image)["image"].shape == (3, 40, 40)


def test_letterbox_keeps_aspect_with_padding():
    recipe = load_recipe(None, ['aug.resize="letterbox"', "data.image_size=40", "data.normalize=\"none\""])
    image = np.full((20, 40, 3), 255, np.uint8)  # wide white image
    out = build_transform(recipe, train=False, mean=(0, 0, 0), std=(1, 1, 1), to_tensor=False)(image=image)["image"]
    assert out.shape == (40, 40, 3)
    assert (out[20] == 255).all() and (out[0] == 0).all()  # the middle rows hold the image, top/bottom padding


@pytest.mark.parametrize("extra", [[], ['aug.randaugment="rand-m9-n3-mstd0.5"']])
def test_dataset_augmentation_is_seeded_by_epoch_and_index(tmp_path, extra):
    paths = [str(_image(tmp_path / f"{i}", "RGB")) for i in range(3)]
    recipe = load_recipe(None, ['aug.preset="medium"', "data.image_size=24", *extra])

    def dataset():
        return ImageDataset(paths, np.arange(3), build_transform(recipe, train=True, mean=IMAGENET_MEAN, std=IMAGENET_STD), seed=5)

    a, b = dataset(), dataset()
    first = a[1][0]
    a[0], a[2], np.random.rand(), __import__("random").random()  # other draws in between change nothing
    assert torch.equal(first, a[1][0]) and torch.equal(first, b[1][0])
    b.set_epoch(1)
    assert not torch.equal(a[1][0], b[1][0])
    assert a[2][1].item() == 2 and a[2][2] == 2


def test_aug_preview_writes_a_grid(tmp_path):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from imagegen import make_imagefolder

    from toolkit.cli.main import run

    root = make_imagefolder(tmp_path / "imgs", per_class=3)
    out = tmp_path / "grid.png"
    assert run(["aug", "preview", str(root), "--set", "data.image_size=32", "--n", "4", "--views", "3", "--out", str(out)]) == 0
    grid = Image.open(out)
    # 4 columns (eval + 3 views) × 4 rows; 32-px images shown as 96-px tiles so they and their captions read
    assert grid.size == (4 + 4 * 100, 4 + 4 * 114)
    cell = np.asarray(grid.convert("RGB"))[4:100, 4:100]
    assert (cell[::3, ::3] == cell[1::3, 1::3]).all()  # each model pixel a 3 × 3 block, not smoothed


@pytest.mark.parametrize("overrides", [
    ['aug.preset="medium"', 'aug.resize="random_resized_crop"'],
    ['aug.preset="sketch"', 'aug.randaugment="rand-m9-mstd0.5"'],
    ['aug.preset="face"', 'aug.transforms=[{name="CLAHE", p=0.3}]'],
])
def test_saved_pipeline_rebuilds_identically(tmp_path, overrides):
    import json
    import random

    recipe = load_recipe(None, ["data.image_size=48", *overrides])
    record = json.loads(json.dumps(pipeline_record(recipe, mean=IMAGENET_MEAN, std=IMAGENET_STD)))  # via JSON
    (tmp_path / "transforms.json").write_text(json.dumps(record))
    image = np.random.default_rng(1).integers(0, 255, (60, 70, 3), dtype=np.uint8)
    for which in ("train", "eval"):
        fresh = build_transform(recipe, train=which == "train", mean=IMAGENET_MEAN, std=IMAGENET_STD)
        rebuilt = load_pipeline(tmp_path / "transforms.json", which)
        outs = []
        for pipeline in (fresh, rebuilt):
            pipeline.set_random_seed(7)
            random.seed(7)  # timm's policies draw from Python's random
            outs.append(pipeline(image=image)["image"])
        assert torch.equal(outs[0], outs[1]), which


@pytest.mark.parametrize("recipe_file", sorted(p.name for p in (Path(__file__).parents[1] / "recipes").glob("*.toml")))
def test_batch_normalize_equals_the_per_image_pipeline(recipe_file):
    """Loaders hand over uint8 HWC images and normalize per batch; the floats must be exactly the ones the
    full albumentations pipeline (Normalize + ToTensorV2, as saved in transforms.json) gives, for the train
    pipeline under a fixed seed and for the eval pipeline, for every recipe in recipes/."""
    import random

    from toolkit.data.dataset import BatchNormalize, as_tensor

    path = Path(__file__).parents[1] / "recipes" / recipe_file
    recipe = load_recipe(path, ["data.image_size=40", "model.pretrained=false"])
    rng = np.random.default_rng(3)
    images = [rng.integers(0, 256, (50 + 7 * i, 61, 3), dtype=np.uint8) for i in range(3)]
    for mean, std in ((IMAGENET_MEAN, IMAGENET_STD), ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)), ((0.11, 0.2, 0.3), (0.3, 0.27, 0.19))):
        for train in (True, False):
            full = build_transform(recipe, train=train, mean=mean, std=std)
            raw = build_transform(recipe, train=train, mean=mean, std=std, to_tensor=False)
            expected, batch = [], []
            for i, image in enumerate(images):
                for pipeline, out in ((full, expected), (raw, batch)):
                    pipeline.set_random_state(np.random.default_rng(i), random.Random(i))
                    random.seed(i)
                    out.append(pipeline(image=image)["image"])
            assert batch[0].dtype == np.uint8 and batch[0].shape == (40, 40, 3)
            for channels_last in (True, False):
                got = BatchNormalize(mean, std, channels_last=channels_last)(torch.stack([as_tensor(b) for b in batch]))
                assert got.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
                assert torch.equal(got, torch.stack(expected)), (recipe_file, train, mean, channels_last)


def test_batch_normalize_rejects_a_channel_mismatch_and_passes_floats_through():
    from toolkit.data.dataset import BatchNormalize, as_tensor

    normalize = BatchNormalize(IMAGENET_MEAN, IMAGENET_STD)
    with pytest.raises(ValueError, match="1 channel"):
        normalize(torch.zeros(2, 4, 4, 1, dtype=torch.uint8))
    x = torch.randn(2, 3, 4, 4)
    assert normalize(x) is x
    frozen = np.zeros((4, 5, 3), np.uint8)
    frozen.flags.writeable = False  # as served by the decoded cache: the tensor must not share it
    t = as_tensor(frozen)
    assert t.shape == (4, 5, 3) and t.dtype == torch.uint8
    t += 1
    assert frozen.max() == 0
    assert as_tensor(np.zeros((4, 5), np.uint8)).shape == (4, 5, 1)
