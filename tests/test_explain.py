"""clsctl explain: Grad-CAM-family maps on CNNs and ViTs, drawn back on each image file's own geometry."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from modelruns import model_run, write_oof
from PIL import Image

from toolkit.cli.main import run as cli
from toolkit.errors import UsageError
from toolkit.export import (
    cam_layer,
    compute_maps,
    explain,
    input_geometry,
    to_original,
    top_loss_explanations,
)

pytestmark = pytest.mark.usefixtures("one_thread")
SIDE, W, H = 14, 64, 48  # square side; images are wider than tall, the model sees 48 × 48


def _square_images(folder, n: int, seed: int, by_class: bool = False) -> list[dict]:
    """Dark noisy images; every other one holds a bright square somewhere (class ``square``), the rest none (``plain``).

    ``by_class`` lays them out as an ImageFolder (``plain/``, ``square/``).
    """
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        pix = rng.normal(60, 20, (H, W, 3))
        label, box = "plain", None
        if i % 2:
            top, left = int(rng.integers(0, H - SIDE)), int(rng.integers(0, W - SIDE))
            pix[top:top + SIDE, left:left + SIDE] = 250
            label, box = "square", (top, left)
        name = f"{label}/{i:03d}.png" if by_class else f"{label}_{i:03d}.png"
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.clip(pix, 0, 255).astype(np.uint8)).save(folder / name)
        rows.append({"path": name, "label": label, "box": box})
    return rows


def _train(arch: str, kwargs: dict, x: torch.Tensor, y: torch.Tensor, lr: float) -> torch.nn.Module:
    import timm

    torch.manual_seed(0)
    model = timm.create_model(arch, pretrained=False, num_classes=2, **kwargs)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    for step in range(64):
        idx = torch.arange(step * 32, step * 32 + 32) % len(y)
        loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


# A CNN whose 6 × 6 last stage (output_stride 8) can say where a 14 px square is, and a ViT with register
# tokens on a 6 × 6 patch grid.
MODELS = {"test_resnet": ({"output_stride": 8}, 3e-3), "test_vit": ({"img_size": H, "patch_size": 8, "reg_tokens": 2}, 3e-4)}


@pytest.fixture(scope="module")
def square(tmp_path_factory):
    """A CNN and a ViT trained (seconds each) to tell images with a bright square from those without, as runs."""
    from toolkit.data.dataset import BatchNormalize
    from toolkit.data.preprocessing import Preprocessing
    from toolkit.data.transforms import eval_pipeline

    base = tmp_path_factory.mktemp("explain")
    train = _square_images(base / "data", 256, seed=0)
    prep = Preprocessing(image_size=H, eval_size=H)
    transform, normalize = eval_pipeline(prep, to_tensor=False), BatchNormalize(prep.mean, prep.std, channels_last=False)
    x = normalize(torch.stack([torch.from_numpy(transform(image=np.asarray(Image.open(base / "data" / r["path"])))["image"])
                               for r in train]))
    y = torch.tensor([r["label"] == "square" for r in train], dtype=torch.long)
    rows = pd.DataFrame([{"path": r["path"], "label": r["label"], "fold": 0} for r in train])
    runs = {}
    for arch, (kwargs, lr) in MODELS.items():
        model = _train(arch, kwargs, x, y, lr)
        runs[arch] = model_run(base / "runs", base / "data", rows, arch=arch, classes={"label": ["plain", "square"]},
                               folds=(0,), size=H, kwargs=kwargs, build=lambda k, m=model: m, name=arch)
    held = _square_images(base / "held", 24, seed=1, by_class=True)
    return {"base": base, "runs": runs, "rows": rows, "held": held, "run": runs["test_resnet"]}


def test_the_map_peaks_on_the_square(square):
    """The class is decided by a bright square: the map's peak lies on it, in the image file's own coordinates.

    The files are 64 × 48 and the model sees 48 × 48, so a map left in the model's geometry would miss.
    """
    held = [r for r in square["held"] if r["box"] is not None]
    result = explain(square["run"], [square["base"] / "held" / r["path"] for r in held], target="square", write=False)
    assert [it.pred for it in result.items] == ["square"] * len(held)  # the model learned the task
    # The map is as fine as the 6 × 6 grid: a peak within half a cell (4 model px) of the square is on it.
    margin_y, margin_x = 4, 4 * W / H
    hits, contrast = 0, []
    for item, row in zip(result.items, held, strict=True):
        cam = item.map
        assert cam.shape == (H, W) and np.isfinite(cam).all()  # the image's size
        assert cam.std() > 0.01 and cam.min() >= 0.0 and cam.max() <= 1.0  # not constant
        top, left = row["box"]
        r, c = np.unravel_index(cam.argmax(), cam.shape)
        hits += top - margin_y <= r < top + SIDE + margin_y and left - margin_x <= c < left + SIDE + margin_x
        inside = np.zeros_like(cam, dtype=bool)
        inside[top:top + SIDE, left:left + SIDE] = True
        contrast.append(cam[inside].mean() / max(cam[~inside].mean(), 1e-6))
    assert hits >= len(held) - 1, f"{hits} of {len(held)} peaks on the square"
    assert np.median(contrast) > 2.0


@pytest.mark.parametrize("arch,method", [("test_vit", "gradcam"), ("test_vit", "gradcam++"), ("test_resnet", "gradcam++")])
def test_maps_are_of_the_image_size_finite_and_not_constant(square, arch, method):
    """On a ViT (register tokens) and a CNN; an ImageFolder gives the labels, so maps can be of the given label."""
    shown = explain(square["runs"][arch], [square["base"] / "held"], target="label", method=method, write=False)
    assert [it.label for it in shown.items] == [r["label"] for r in sorted(square["held"], key=lambda r: r["path"])]
    assert [it.target for it in shown.items] == [it.label for it in shown.items]
    assert sum(it.pred == it.label for it in shown.items) >= 0.9 * len(shown.items)  # both models learned the task
    for item in shown.items:
        assert item.map.shape == (H, W) and np.isfinite(item.map).all()
        assert item.map.min() >= 0.0 and item.map.max() <= 1.0
    squares = [it.map for it in shown.items if it.label == "square"]
    assert all(m.std() > 0.01 for m in squares)  # the evidence for a square is somewhere, not everywhere


def test_layers_and_hooks(square):
    from toolkit.models import load_fold_model

    vit, cnn = (load_fold_model(square["runs"][arch], 0).model for arch in ("test_vit", "test_resnet"))
    where = cam_layer(vit)
    assert where.family == "tokens" and where.layer is vit.blocks[-1].norm1
    tokens = torch.randn(2, 3 + 16, 64)  # class + 2 register tokens, then a 4 × 4 grid
    assert where.reshape(tokens).shape == (2, 64, 4, 4)
    assert torch.equal(where.reshape(tokens)[:, :, 0, 0], tokens[:, 3, :])
    assert cam_layer(cnn).family == "features"
    for model in (vit, cnn):
        x = torch.randn(3, 3, H, H)
        out = compute_maps(model, x, [0, 1, 0], "gradcam")
        assert out.maps.shape == (3, H, H)
        with torch.no_grad():
            np.testing.assert_allclose(out.logits, model(x).numpy(), atol=1e-5)  # the same forward as the model's
        assert not any(m._forward_hooks or m._backward_hooks for m in model.modules())  # hooks released
    with pytest.raises(UsageError, match="--method"):
        compute_maps(vit, x, [0], "lime")


@pytest.mark.parametrize("resize,crop_pct,expect", [
    ("stretch", 1.0, (32, 102)),      # 160 × 100 file, 80 × 50 loaded: each axis scaled on its own
    ("center_crop", 0.875, (33, 90)),  # shorter side to 37, then the centre 32 × 32
    ("letterbox", 1.0, (22, 102)),     # longer side to 32, 6 rows of padding above
])
def test_maps_are_drawn_back_through_the_eval_resize(resize, crop_pct, expect):
    from toolkit.data.preprocessing import Preprocessing
    from toolkit.data.transforms import eval_pipeline

    transform = eval_pipeline(Preprocessing(image_size=32, eval_size=32, resize=resize, crop_pct=crop_pct), to_tensor=False)
    cam = np.zeros((32, 32), np.float32)
    cam[10, 20] = 1.0  # one model pixel
    back = to_original(cam, input_geometry(transform, 50, 80), (50, 80), (100, 160))
    assert back.shape == (100, 160)
    assert np.unravel_index(back.argmax(), back.shape) == expect
    if resize == "center_crop":  # what the crop cut off was never seen: no heat there
        assert back[:, :30].max() == 0 and back[:, 135:].max() == 0


def test_top_losses_writes_pngs_a_page_and_what_report_reads(square, capsys):
    run, rows = square["run"], square["rows"]
    probs = np.full((len(rows), 2), 0.5)
    truth = (rows["label"] == "square").to_numpy().astype(int)
    probs[np.arange(len(rows)), truth] = 0.9
    probs[np.arange(len(rows)), 1 - truth] = 0.1
    worst = [5, 2, 9]  # confidently wrong, most confident first
    for rank, i in enumerate(worst):
        probs[i, truth[i]], probs[i, 1 - truth[i]] = 0.02 * (rank + 1), 1 - 0.02 * (rank + 1)
    write_oof(run, rows, probs, ["plain", "square"])
    assert top_loss_explanations(run) is None
    rc = cli(["explain", str(run.path), "--top-losses", "3", "--target", "label"])
    assert rc == 0, capsys.readouterr().err
    shown = top_loss_explanations(run)
    assert shown is not None and shown["method"] == "gradcam" and shown["target"] == "label"
    assert [it["path"] for it in shown["items"]] == [str(square["base"] / "data" / rows["path"][i]) for i in worst]
    losses = [it["loss"] for it in shown["items"]]
    assert losses == sorted(losses, reverse=True) and losses[0] == pytest.approx(-np.log(0.02))
    assert [it["target"] for it in shown["items"]] == [rows["label"][i] for i in worst]
    for item in shown["items"]:
        png = Image.open(item["png"])
        assert png.format == "PNG" and png.size[0] >= 400
    page = (run.explain_dir() / "index.html").read_text()
    assert page.count("<img ") == 3 and "Grad-CAM" in page
    assert json.loads((run.explain_dir() / "explanations.json").read_text())["run"] == run.id


def test_bad_requests_are_one_line_errors(square, capsys):
    run = square["run"]
    image = square["base"] / "held" / square["held"][1]["path"]  # a file: no label
    with pytest.raises(UsageError, match="not both"):
        explain(run, [image], top_losses=3)
    with pytest.raises(UsageError, match="no label"):
        explain(run, [image], target="label", write=False)
    with pytest.raises(UsageError, match="not pred, label or a class"):
        explain(run, [image], target="circle", write=False)
    assert cli(["explain", str(run.path), str(image), "--method", "lime"]) == 2
    assert "--method 'lime'" in capsys.readouterr().err
