"""The trainer, end to end on tiny generated data: artifacts, resume after a real kill, DDP, multi-head."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from imagegen import make_imagefolder, write_recipe

from toolkit.cli.main import run as cli
from toolkit.config import load_recipe
from toolkit.errors import ToolkitError, TrainingError

REPO = Path(__file__).resolve().parents[1]
VOLATILE = ("seconds", "train_img_s", "train_s", "data_wait_s")


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    return make_imagefolder(tmp_path_factory.mktemp("imgs") / "train", per_class=12)


def _only_run(runs: Path) -> Path:
    found = [p for p in runs.iterdir() if (p / "run.json").is_file()]
    assert len(found) == 1, found
    return found[0]


def _metrics(run_dir: Path) -> pd.DataFrame:
    df = pd.read_csv(run_dir / "metrics.csv")
    return df.drop(columns=[c for c in VOLATILE if c in df.columns]).sort_values(["fold", "epoch"]).reset_index(drop=True)


def test_one_epoch_writes_every_artifact(images, tmp_path):
    recipe = write_recipe(tmp_path / "r.toml", images)
    runs = tmp_path / "runs"
    assert cli(["train", "--recipe", str(recipe), "--runs", str(runs), "--name", "tiny"]) == 0
    run_dir = _only_run(runs)
    assert run_dir.name.endswith("-tiny")
    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "finished" and info["kind"] == "train" and info["data_fingerprint"]
    assert load_recipe(run_dir / "recipe.toml") == load_recipe(recipe)

    metrics = pd.read_csv(run_dir / "metrics.csv")
    assert sorted(metrics["fold"].unique()) == [0, 1, 2] and len(metrics) == 3
    for col in ("train_loss", "val_loss", "accuracy", "macro_f1", "lr", "seconds", "train_img_s",
                "recall_red", "recall_green", "recall_blue"):
        assert col in metrics.columns and metrics[col].notna().all(), col

    oof = pd.read_parquet(run_dir / "oof.parquet")
    assert len(oof) == 36 and oof["id"].is_unique
    assert list(oof.columns[:4]) == ["id", "path", "fold", "label"]
    probs = oof[["blue", "green", "red"]].to_numpy()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    manifest = pd.read_csv(run_dir / "manifest.csv")
    assert dict(zip(oof["path"], oof["fold"], strict=True)) == dict(zip(manifest["path"], manifest["fold"], strict=True))

    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["classes"] == {"label": ["blue", "green", "red"]}
    assert set(summary["cv"]["macro_f1"]) >= {"mean", "std"}
    cm = np.array(summary["oof"]["confusion_matrix"])
    assert cm.shape == (3, 3) and cm.sum() == 36
    assert set(summary["oof"]["per_class_recall"]) == {"blue", "green", "red"}

    for k in range(3):
        fold = run_dir / "folds" / str(k)
        for name in ("model.safetensors", "model.json", "oof.parquet", "done.json"):
            assert (fold / name).is_file(), (k, name)
        assert not any(p.name.startswith(".") for p in fold.iterdir())
        assert not any(p.name.startswith("state") for p in fold.iterdir())  # a finished fold's state is removed

    # The built pipelines are saved in albumentations' serialization and rebuild to the same eval pixels.
    from toolkit.data.transforms import build_transform, load_pipeline

    record = json.loads((run_dir / "transforms.json").read_text())
    rebuilt = load_pipeline(run_dir / "transforms.json", "eval")
    fresh = build_transform(load_recipe(recipe), train=False, mean=record["mean"], std=record["std"])
    pixels = np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8)
    assert torch.equal(rebuilt(image=pixels)["image"], fresh(image=pixels)["image"])
    assert record["train"]["transform"]["transforms"]  # the train steps are listed too

    # The best checkpoint loads straight into timm, head included, as the docs promise (timm keeps the
    # file's head only when the overlay names its class count; without it the head would be random).
    import timm
    from safetensors.torch import load_file

    meta = json.loads((run_dir / "folds/0/model.json").read_text())
    weights = str(run_dir / "folds/0/model.safetensors")
    model = timm.create_model(meta["arch"], pretrained=True, num_classes=meta["num_classes"],
                              pretrained_cfg_overlay=dict(file=weights, num_classes=meta["num_classes"]))
    assert meta["classes"] == ["blue", "green", "red"] and meta["image_size"] == 32
    saved = load_file(weights)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in saved.items())
    with torch.no_grad():
        assert model.eval()(torch.zeros(1, 3, 32, 32)).shape == (1, 3)


def test_new_head_on_pretrained_weights_starts_at_zero(tmp_path):
    import timm
    from safetensors.torch import save_file

    from toolkit.config.schema import ModelConfig
    from toolkit.models import create_model

    source = timm.create_model("resnet18", num_classes=10)
    save_file(source.state_dict(), tmp_path / "w.safetensors")
    x = torch.randn(2, 3, 32, 32)
    for head_init in ("zero", "timm"):
        cfg = ModelConfig(name="resnet18", pretrained_file=str(tmp_path / "w.safetensors"), head_init=head_init)
        model = create_model(cfg, 3).eval()
        assert torch.equal(model.conv1.weight, source.conv1.weight)  # the backbone is loaded either way
        with torch.no_grad():
            logits = model(x)
        assert torch.equal(logits, torch.zeros(2, 3)) == (head_init == "zero")
    multi = create_model(ModelConfig(name="resnet18", pretrained_file=str(tmp_path / "w.safetensors")), [2, 3],
                         ["a", "b"])
    with torch.no_grad():
        assert torch.equal(multi.eval()(x), torch.zeros(2, 5))
    scratch = create_model(ModelConfig(name="resnet18", pretrained=False), 3)  # no weights: the model's own init
    assert scratch.get_classifier().weight.abs().sum() > 0


def test_learns_the_colours(images, tmp_path):
    recipe = write_recipe(tmp_path / "r.toml", images, train={"epochs": 4, "deterministic": False},
                          aug={"preset": "none"})
    runs = tmp_path / "runs"
    assert cli(["train", "--recipe", str(recipe), "--runs", str(runs), "--folds", "0"]) == 0
    summary = json.loads((_only_run(runs) / "summary.json").read_text())
    assert summary["folds"]["0"]["metrics"]["accuracy"] >= 0.75, summary["folds"]["0"]


def _train_cmd(recipe: Path, runs: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "toolkit", "train", "--recipe", str(recipe), "--runs", str(runs), *extra]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def test_resume_after_kill_matches_uninterrupted(images, tmp_path):
    recipe = write_recipe(tmp_path / "r.toml", images, train={"epochs": 4, "deterministic": True},
                          split={"folds": 2})
    full = tmp_path / "full"
    subprocess.run(_train_cmd(recipe, full, "--folds", "0"), check=True, env=_env(), capture_output=True)

    cut = tmp_path / "cut"
    proc = subprocess.Popen(_train_cmd(recipe, cut, "--folds", "0"), env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    metrics_file = None
    while time.time() < deadline and proc.poll() is None:
        runs = [p for p in cut.glob("*") if (p / "metrics.csv").is_file()] if cut.exists() else []
        if runs:
            metrics_file = runs[0] / "metrics.csv"
            if len(metrics_file.read_text().strip().splitlines()) >= 3:  # header + 2 epochs
                break
        time.sleep(0.05)
    assert proc.poll() is None, "training ended before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=60)
    run_dir = metrics_file.parent
    assert json.loads((run_dir / "run.json").read_text())["status"] == "interrupted"
    assert not (run_dir / "folds/0/done.json").exists()

    done = subprocess.run([sys.executable, "-m", "toolkit", "train", "--resume", str(run_dir), "--folds", "0",
                           "--runs", str(cut)], env=_env(), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "resumed after epoch" in done.stdout
    assert json.loads((run_dir / "run.json").read_text())["status"] == "finished"
    pd.testing.assert_frame_equal(_metrics(run_dir), _metrics(_only_run(full)))
    a = pd.read_parquet(run_dir / "oof.parquet")
    b = pd.read_parquet(_only_run(full) / "oof.parquet")
    pd.testing.assert_frame_equal(a, b)


def test_same_seed_same_metrics(images, tmp_path):
    recipe = write_recipe(tmp_path / "r.toml", images, train={"epochs": 2, "deterministic": True})
    for name in ("a", "b"):
        assert cli(["train", "--recipe", str(recipe), "--runs", str(tmp_path / name), "--folds", "1"]) == 0
    pd.testing.assert_frame_equal(_metrics(_only_run(tmp_path / "a")), _metrics(_only_run(tmp_path / "b")))


def test_resume_skips_finished_folds_and_rejects_recipe(images, tmp_path):
    recipe = write_recipe(tmp_path / "r.toml", images, split={"folds": 2})
    runs = tmp_path / "runs"
    assert cli(["train", "--recipe", str(recipe), "--runs", str(runs), "--folds", "0"]) == 0
    run_dir = _only_run(runs)
    before = (run_dir / "folds/0/model.safetensors").stat().st_mtime_ns
    # The run records --folds 0; an explicit --folds all extends it to fold 1 (without it, fold 0 only).
    assert cli(["train", "--resume", run_dir.name, "--runs", str(runs), "--folds", "all"]) == 0
    assert (run_dir / "folds/0/model.safetensors").stat().st_mtime_ns == before
    assert (run_dir / "folds/1/done.json").is_file()
    assert len(pd.read_parquet(run_dir / "oof.parquet")) == 36
    assert cli(["train", "--resume", run_dir.name, "--runs", str(runs), "--recipe", str(recipe)]) == 2


def test_non_finite_loss_stops_with_clear_error_keeping_checkpoint(images, tmp_path):
    from toolkit.train import Callback, train

    recipe = load_recipe(write_recipe(tmp_path / "r.toml", images, train={"epochs": 3}))

    class Poison(Callback):
        """After the first epoch (its checkpoint is written first), the weights turn NaN, so the
        second epoch's training loss is NaN."""

        def on_epoch_end(self, trainer, state, row, val):
            with torch.no_grad():
                for param in state.model.parameters():
                    param.fill_(float("nan"))

    with pytest.raises(TrainingError, match="non-finite loss in fold 0, epoch 1"):
        train(recipe, runs_root=tmp_path / "runs", folds="0", callbacks=[Poison()], progress=False)
    run_dir = _only_run(tmp_path / "runs")
    assert json.loads((run_dir / "run.json").read_text())["status"] == "failed"
    assert (run_dir / "folds/0/model.safetensors").is_file()
    assert json.loads((run_dir / "folds/0/model.json").read_text())["epoch"] == 0


def test_offline_pretrained_fails_fast(images, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    recipe = load_recipe(write_recipe(tmp_path / "r.toml", images, model={"name": "resnet18", "pretrained": True}))
    from toolkit.train import train

    start = time.perf_counter()
    with pytest.raises(ToolkitError, match="pretrained") as exc:
        train(recipe, runs_root=tmp_path / "runs", folds="0")
    assert time.perf_counter() - start < 5
    assert "pretrained_file" in str(exc.value)
    assert not (tmp_path / "runs").exists()  # found before any data is read or any run folder exists


@pytest.mark.parametrize("source", ["missing_file", "unreachable_hub"])
def test_unusable_pretrained_weights_fail_before_the_data_is_read(images, tmp_path, monkeypatch, source):
    """The weights are checked before the manifest is read and the decoded cache decodes every image."""
    from toolkit.errors import DataError
    from toolkit.train import train
    from toolkit.train import trainer as trainer_mod

    def never(*args, **kwargs):
        raise AssertionError("the data was read before the pretrained weights were checked")

    monkeypatch.setattr(trainer_mod, "load_training_data", never)
    monkeypatch.setattr("toolkit.imaging.cache.warm_cache", never)
    if source == "missing_file":
        model = {"name": "resnet18", "pretrained_file": str(tmp_path / "nope.safetensors")}
        expected = DataError
    else:  # a hub endpoint on a closed local port: the connection is refused at once
        monkeypatch.delenv("HF_HUB_OFFLINE")
        monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
        model = {"name": "resnet18", "pretrained": True}
        expected = ToolkitError
    recipe = load_recipe(write_recipe(tmp_path / "r.toml", images, model=model, data={"cache": True}))
    with pytest.raises(expected, match="pretrained"):
        train(recipe, runs_root=tmp_path / "runs", folds="0", progress=False)
    assert not (tmp_path / "runs").exists()


def test_recipe_without_data_fails_before_torch_is_imported(tmp_path):
    recipe = tmp_path / "r.toml"
    recipe.write_text('[model]\nname = "resnet18"\npretrained = false\n[train]\nepochs = 1\n')
    out = subprocess.run([sys.executable, "-X", "importtime", "-m", "toolkit", "train", "--recipe", str(recipe),
                          "--runs", str(tmp_path / "runs")], env=_env(), capture_output=True, text=True)
    assert out.returncode == 2, out.stderr[-2000:]
    errors = [line for line in out.stderr.splitlines() if not line.startswith("import time:")]
    assert len(errors) == 1 and errors[0].startswith("error: the recipe names no data"), errors
    imported = {line.rsplit("|", 1)[-1].strip() for line in out.stderr.splitlines() if line.startswith("import time:")}
    assert "toolkit.config.loader" in imported  # the listing is real: the recipe was loaded
    assert not {"torch", "timm", "accelerate"} & imported
    assert not (tmp_path / "runs").exists()


def test_pretrained_file_missing_and_bad_model_name(images, tmp_path):
    recipe = write_recipe(tmp_path / "r.toml", images, model={"pretrained_file": "nope.safetensors"})
    assert cli(["train", "--recipe", str(recipe), "--runs", str(tmp_path / "runs"), "--folds", "0"]) == 2
    recipe = write_recipe(tmp_path / "r2.toml", images, model={"name": "resnet_18"})
    assert cli(["train", "--recipe", str(recipe), "--runs", str(tmp_path / "runs"), "--folds", "0"]) == 2
    assert cli(["train", "--recipe", str(recipe), "--runs", str(tmp_path / "runs"), "--folds", "7"]) == 2


def test_bad_loss_or_metric_fails_before_any_run(images, tmp_path):
    recipe = write_recipe(tmp_path / "r.toml", images, loss={"name": "focall"})
    runs = tmp_path / "runs"
    assert cli(["train", "--recipe", str(recipe), "--runs", str(runs)]) == 2
    assert not runs.exists() or not any(runs.iterdir())


def test_multihead_metrics_and_oof(tmp_path):
    # Two heads: colour (3) and brightness (2); the combined label has 6 classes.
    root = tmp_path / "mh"
    rng = np.random.default_rng(0)
    rows = []
    for colour, rgb in {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}.items():
        for bright in ("dark", "light"):
            for i in range(6):
                scale = 0.35 if bright == "dark" else 1.0
                pix = np.array(rgb, np.float32) * scale + rng.normal(0, 10, (24, 24, 3))
                rel = f"{colour}_{bright}_{i}.png"
                root.mkdir(exist_ok=True)
                from PIL import Image

                Image.fromarray(np.clip(pix, 0, 255).astype(np.uint8)).save(root / rel)
                rows.append({"path": rel, "colour": colour, "bright": bright, "label": f"{colour}_{bright}"})
    pd.DataFrame(rows).to_csv(tmp_path / "m.csv", index=False)
    recipe = write_recipe(tmp_path / "r.toml", root, data={"manifest": str(tmp_path / "m.csv")},
                          targets={"heads": ["colour", "bright"]}, train={"epochs": 2})
    runs = tmp_path / "runs"
    assert cli(["train", "--recipe", str(recipe), "--runs", str(runs), "--folds", "0"]) == 0
    run_dir = _only_run(runs)
    metrics = pd.read_csv(run_dir / "metrics.csv")
    for col in ("macro_f1", "colour/macro_f1", "bright/macro_f1", "colour/accuracy"):
        assert col in metrics.columns, col
    oof = pd.read_parquet(run_dir / "oof.parquet")
    for col in ("label:colour", "label:bright", "colour:red", "bright:dark"):
        assert col in oof.columns
    np.testing.assert_allclose(oof[["colour:blue", "colour:green", "colour:red"]].sum(axis=1), 1.0, atol=1e-5)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert np.array(summary["oof"]["combined"]["confusion_matrix"]).shape == (6, 6)


def test_ddp_two_processes_match_single_process(images, tmp_path):
    """Real 2-process DDP on CPU (gloo): one run folder, complete OOF, metrics close to 1 process."""
    recipe = write_recipe(tmp_path / "r.toml", images, train={"epochs": 2, "batch_size": 4, "deterministic": True},
                          split={"folds": 2})
    single = tmp_path / "single"
    subprocess.run(_train_cmd(recipe, single, "--folds", "0", "--set", "train.batch_size=8"), check=True, env=_env(), capture_output=True)
    double = tmp_path / "double"
    env = {**_env(), "ACCELERATE_USE_CPU": "true"}
    # batch 4 per process × 2 processes = batch 8, the single-process batch of the comparison run
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "toolkit", "train",
           "--recipe", str(recipe), "--runs", str(double), "--folds", "0"]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    run_dir = _only_run(double)
    info = json.loads((run_dir / "run.json").read_text())
    assert info["num_processes"] == 2 and info["status"] == "finished"
    oof = pd.read_parquet(run_dir / "oof.parquet")
    manifest = pd.read_csv(run_dir / "manifest.csv")
    assert oof["id"].is_unique and len(oof) == int((manifest["fold"] == 0).sum())
    m2 = _metrics(run_dir)
    m1 = _metrics(_only_run(single))
    assert len(m2) == len(m1) == 2
    np.testing.assert_allclose(m2["val_loss"], m1["val_loss"], rtol=0.25)


def test_sampler_class_frequencies():
    """Statistical check on a fixed seed: balanced ≈ uniform, sqrt ∝ √n_c, random ∝ n_c."""
    from toolkit.data.samplers import class_balanced_sampler

    labels = np.repeat([0, 1, 2], [800, 150, 50])
    for mode, expected in (("balanced", np.array([1, 1, 1]) / 3),
                           ("sqrt", np.sqrt([800, 150, 50]) / np.sqrt([800, 150, 50]).sum())):
        g = torch.Generator().manual_seed(0)
        drawn = labels[list(class_balanced_sampler(labels, mode, 30000, g))]
        freq = np.bincount(drawn, minlength=3) / len(drawn)
        # 30k draws: the standard error of each share is below 0.003
        np.testing.assert_allclose(freq, expected, atol=0.012)


def test_mixup_ema_and_balanced_sampler_train_and_resume(images, tmp_path):
    recipe = write_recipe(tmp_path / "r.toml", images,
                          aug={"mixup_alpha": 0.4, "cutmix_alpha": 1.0, "randaugment": "rand-m5-n1"},
                          train={"epochs": 2, "ema": True, "ema_decay": 0.9, "sampler": "balanced", "epoch_samples": 24,
                                 "keep_state": True})
    runs = tmp_path / "runs"
    assert cli(["train", "--recipe", str(recipe), "--runs", str(runs), "--folds", "0"]) == 0
    run_dir = _only_run(runs)
    meta = json.loads((run_dir / "folds/0/model.json").read_text())
    assert meta["weights"] == "ema"
    assert (run_dir / "folds/0/state/ema.safetensors").is_file()
    metrics = pd.read_csv(run_dir / "metrics.csv")
    assert len(metrics) == 2 and np.isfinite(metrics["train_loss"]).all()
    # 24 samples per epoch at batch 8 → 3 steps each
    state = json.loads((run_dir / "folds/0/state/progress.json").read_text())
    assert state["progress"]["num_updates"] == 6


def test_mixup_needs_even_batch(images, tmp_path):
    recipe = write_recipe(tmp_path / "r.toml", images, aug={"mixup_alpha": 0.4}, train={"batch_size": 7})
    runs = tmp_path / "runs"
    assert cli(["train", "--recipe", str(recipe), "--runs", str(runs), "--folds", "0"]) == 2
    assert not runs.exists() or not any(runs.iterdir())


def test_default_loader_workers(monkeypatch):
    from toolkit.runtime import train_loader_workers

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(2)))
    assert train_loader_workers(None, 1, on_gpu=False) == 1  # small CPU: one worker augments beside the model
    assert train_loader_workers(None, 2, on_gpu=False) == 0  # one core per process: decode in-process
    assert train_loader_workers(None, 1, on_gpu=True) == 2
    assert train_loader_workers(3, 1, on_gpu=False) == 3  # the recipe wins
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)))
    assert train_loader_workers(None, 1, on_gpu=False) == 4
    assert train_loader_workers(None, 2, on_gpu=True) == 8


def test_loader_workers_run_opencv_on_one_thread():
    """Loader workers are the parallelism: OpenCV's own pool in each would compete with the model's threads."""
    import os
    import subprocess
    import sys

    code = ("import cv2; cv2.setNumThreads(4); from toolkit.runtime import single_threaded_worker; "
            "single_threaded_worker(0); print(cv2.getNumThreads())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    assert out.stdout.strip() == "1"


class _Stop(Exception):
    """Stands for a crash in the middle of a fold."""


def test_a_callback_stops_training_after_epoch_one(images, tmp_path):
    """A sweep's pruning is a callback on `on_epoch_end` that sets `should_stop`; the loop is untouched."""
    from toolkit.train import Callback, train

    class Prune(Callback):
        def on_epoch_end(self, trainer, state, row, val):
            if state.epoch >= 1:
                state.should_stop = True

    recipe = load_recipe(write_recipe(tmp_path / "r.toml", images, train={"epochs": 4}, split={"folds": 2}))
    run = train(recipe, runs_root=tmp_path / "runs", folds="0", callbacks=[Prune()], progress=False)
    metrics = pd.read_csv(run.path / "metrics.csv")
    assert metrics["epoch"].tolist() == [0, 1]
    done = json.loads((run.path / "folds/0/done.json").read_text())
    assert done["epochs_run"] == 2
    assert run.status == "finished" and (run.path / "oof.parquet").is_file()


def test_resume_skips_finished_folds_and_restores_callback_state(images, tmp_path):
    """Fold 0 finishes (its state is removed), fold 1 crashes in epoch 1; resume skips fold 0, continues fold 1
    from its saved epoch 0 with the callbacks' saved state, and ends where an uninterrupted run ends."""
    from toolkit.progress import PlainProgress
    from toolkit.train import Callback, train

    class Counter(Callback):
        """Counts epochs across folds; its count is saved with the training state."""

        def __init__(self, crash_at: tuple[int, int] | None = None) -> None:
            self.epochs, self.crash_at, self.restored = 0, crash_at, None

        def on_epoch_end(self, trainer, state, row, val):
            if (state.fold, state.epoch) == self.crash_at:
                raise _Stop
            self.epochs += 1

        def state_dict(self):
            return {"epochs": self.epochs}

        def load_state_dict(self, state):
            self.epochs = self.restored = state["epochs"]

    recipe = load_recipe(write_recipe(tmp_path / "r.toml", images, train={"epochs": 3, "patience": 5},
                                      split={"folds": 2}))
    full = train(recipe, runs_root=tmp_path / "full", callbacks=[Counter()], progress=False)

    with pytest.raises(_Stop):
        train(recipe, runs_root=tmp_path / "cut", callbacks=[Counter(crash_at=(1, 1))], progress=False)
    cut = _only_run(tmp_path / "cut")
    assert json.loads((cut / "run.json").read_text())["status"] == "failed"
    assert (cut / "folds/0/done.json").is_file() and not (cut / "folds/0/state").exists()
    assert (cut / "folds/1/state/progress.json").is_file() and not (cut / "folds/1/done.json").exists()
    finished_at = (cut / "folds/0/model.safetensors").stat().st_mtime_ns

    lines = io.StringIO()
    counter = Counter()
    run = train(recipe, runs_root=tmp_path / "cut", resume=cut.name, callbacks=[counter],
                progress=PlainProgress(stream=lines))
    assert run.path == cut and run.status == "finished"
    assert "fold 0: already finished, skipped" in lines.getvalue()
    assert "fold 1: resumed after epoch 0" in lines.getvalue()
    assert counter.restored == 4  # fold 0's three epochs and fold 1's first, as saved after that epoch
    assert (cut / "folds/0/model.safetensors").stat().st_mtime_ns == finished_at
    assert not (cut / "folds/1/state").exists()
    pd.testing.assert_frame_equal(_metrics(cut), _metrics(full.path))
    pd.testing.assert_frame_equal(pd.read_parquet(cut / "oof.parquet"), pd.read_parquet(full.path / "oof.parquet"))


def test_keep_state_keeps_a_finished_folds_state(images, tmp_path):
    from toolkit.train import train

    recipe = load_recipe(write_recipe(tmp_path / "r.toml", images, train={"keep_state": True}, split={"folds": 2}))
    run = train(recipe, runs_root=tmp_path / "runs", folds="0", progress=False)
    saved = json.loads((run.path / "folds/0/state/progress.json").read_text())
    assert saved["progress"]["epoch"] == 0 and (run.path / "folds/0/done.json").is_file()


def test_plain_progress_reports_every_log_every_steps(images, tmp_path):
    from toolkit.progress import PlainProgress
    from toolkit.train import train

    # 24 training images at batch 8: 3 steps per epoch; a line every 2 steps → one per epoch
    recipe = load_recipe(write_recipe(tmp_path / "r.toml", images, train={"epochs": 2, "log_every": 2},
                                      split={"folds": 3}))
    out = io.StringIO()
    train(recipe, runs_root=tmp_path / "runs", folds="0", progress=PlainProgress(stream=out))
    lines = out.getvalue().splitlines()
    steps = [line for line in lines if " step " in line]
    assert [line.split(" loss ")[0] for line in steps] == ["fold 0 epoch 1/2 step 2/3", "fold 0 epoch 2/2 step 2/3"]
    assert sum(line.startswith("fold 0 epoch 0 | train_loss") for line in lines) == 1


def test_plain_and_null_progress():
    from toolkit.progress import NullProgress, PlainProgress, Progress

    out = io.StringIO()
    progress = PlainProgress(stream=out)
    assert isinstance(progress, Progress) and isinstance(NullProgress(), Progress)
    task = progress.task("pass", 10, every=4)
    for _ in range(5):
        task.advance(2, "ok")
    task.close()
    progress.task("bars only", 3).advance(3)
    progress.log("done")
    assert out.getvalue().splitlines() == ["pass step 4/10 ok", "pass step 8/10 ok", "done"]


def test_summary_table_shows_the_selection_metric_once(capsys):
    from toolkit.cli.train import _print_summary

    class FakeRun:
        path = "runs/x"
        summary = {"metric": "macro_f1", "folds": {"0": {"best_epoch": 1, "best_score": 0.9,
                                                          "metrics": {"accuracy": 0.95, "macro_f1": 0.9}}},
                   "cv": {"macro_f1": {"mean": 0.9, "std": 0.0}, "accuracy": {"mean": 0.95, "std": 0.0}}}

    _print_summary(FakeRun())
    out = capsys.readouterr().out
    header = out.splitlines()[0]
    assert header.split() == ["fold", "best", "epoch", "macro_f1", "accuracy"]
    assert out.count("CV macro_f1") == 1 and out.count("CV accuracy") == 1


def test_terminal_display_runs_bars_and_logs_above_them(capsys):
    from toolkit.cli.progress import RichProgress, progress_display
    from toolkit.progress import PlainProgress

    with progress_display(terminal=False) as plain:
        assert isinstance(plain, PlainProgress)
    with progress_display(terminal=True) as display:
        assert isinstance(display, RichProgress)
        folds = display.task("folds", 2)
        batches = display.task("fold 0 epoch 1/1", 3, every=1)
        batches.advance(3, "loss 0.1")
        display.log("fold 0 epoch 0 | train_loss 0.1000")
        batches.close()
        batches.close()  # closing twice is harmless
        assert display.open == 1 and display.bars.live.is_started
        folds.advance(1)
    assert not display.bars.live.is_started  # an open task does not keep the display alive
    assert "fold 0 epoch 0 | train_loss 0.1000" in capsys.readouterr().out


def test_a_calibration_that_cannot_be_fitted_keeps_the_summary(images, tmp_path, monkeypatch):
    """The run is good even when its out-of-fold calibration fails: summary.json is written with the reason."""
    from toolkit.errors import DataError
    from toolkit.train import results, train

    def refuse(*args, **kwargs):
        raise DataError("probabilities contain NaN or infinity", "check the model outputs")

    monkeypatch.setattr(results, "fit_calibration", refuse)
    recipe = load_recipe(write_recipe(tmp_path / "r.toml", images, train={"epochs": 1}, split={"folds": 2}))
    run = train(recipe, runs_root=tmp_path / "runs", progress=False)
    summary = run.summary
    assert run.status == "finished" and summary["oof_rows"] > 0 and "cv" in summary
    assert "calibration" not in summary
    assert summary["calibration_error"] == "probabilities contain NaN or infinity"
