"""Recipe sections as frozen dataclasses.

Every field carries its one-line meaning in ``metadata["help"]``; ``clsctl recipe keys`` and the
README table are generated from it, so the documentation cannot drift from the code. Fields that
hold file paths say so with ``metadata["path"]``: a relative path in a recipe is relative to the
recipe file that sets it.

Defaults are the practice that competitors converged on: AdamW + cosine with warmup, label
smoothing 0.1, early stopping on macro-F1, grouped/stratified 5-fold.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

import tomli_w


def _f(default: Any, help: str, *, path: bool = False, factory: bool = False) -> Any:
    meta = {"help": help, "path": path}
    if factory:
        return field(default_factory=default, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class DataConfig:
    root: str | None = _f(None, "image root folder (ImageFolder, pattern or manifest root); `builtin:digits` for the bundled digits", path=True)
    manifest: str | None = _f(None, "CSV or Parquet manifest with a path column relative to `root` (a `clsctl split` output works)", path=True)
    pattern: str | None = _f(None, "regex with named groups that must match the whole relative path, e.g. `images/(?P<id>\\d+)_(?P<gender>[a-z]+)_(?P<race>\\w+)_(?P<age>\\d+)/(?P<stem>[a-z_]+?)\\d*\\.\\w+`")
    unlabeled: bool = _f(False, "treat `root` as a folder of unlabeled images (a test set)")
    path_column: str = _f("path", "manifest column holding the relative image path")
    label_column: str = _f("label", "column holding the class label (ImageFolder: the subfolder name)")
    group_column: str | None = _f(None, "column holding a group id (person, photo, patient) copied into `group`")
    extensions: list[str] = _f(lambda: [".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"],
                               "image file suffixes picked up when listing folders", factory=True)
    image_size: int = _f(224, "side length (px) the model sees in training")
    eval_size: int | None = _f(None, "side length (px) for validation and prediction; unset = image_size")
    normalize: Literal["imagenet", "model", "dataset", "none"] = _f(
        "model", "mean/std: `imagenet`, the pretrained `model` config, `dataset` (from eda), or `none`")
    mean: list[float] | None = _f(None, "explicit per-channel mean (overrides `normalize`)")
    std: list[float] | None = _f(None, "explicit per-channel std (overrides `normalize`)")
    stats_file: str | None = _f(None, "eda.json whose mean/std `normalize = \"dataset\"` uses", path=True)
    num_workers: int | None = _f(None, "DataLoader workers; unset = the cores per process on GPU; on CPU none with one core per process, one with 2-4, a quarter of the cores above")
    cache: bool = _f(True, "decode each image once into an on-disk cache, downscaled to the largest size the recipe needs")
    cache_ram_mb: int = _f(2048, "decoded images also kept in memory by training, up to this many MiB per process (split among its loader workers; 0 = read the disk cache every time)")
    cache_dir: str | None = _f(None, "where the decoded cache lives; unset = $CLSCTL_CACHE/decoded (~/.cache/clsctl/decoded)", path=True)
    cache_disk_gb: float | None = _f(None, "disk budget of the decoded cache folder in GiB, least recently used entries evicted first; unset = no limit")
    on_bad_image: Literal["fail", "skip"] = _f(
        "fail", "an image that cannot be decoded: `fail` before training starts, naming every such file, or `skip` "
        "its row (counted and listed in run.json as `bad_images`)")


@dataclass(frozen=True)
class BinSpec:
    column: str = _f("age", "numeric column to bin")
    edges: list[float] = _f(lambda: [30.0, 60.0], "inner boundaries; a value equal to an edge goes to the upper bin", factory=True)
    labels: list[str] | None = _f(None, "one label per bin (len(edges)+1); default `<30`, `30-59`, `>=60` style")


@dataclass(frozen=True)
class MapSpec:
    column: str = _f("", "source column")
    values: dict[str, str] = _f(dict, "source value → target value; unmapped values are an error", factory=True)
    regex: bool = _f(False, "treat the keys of `values` as regular expressions (first full match wins)")


@dataclass(frozen=True)
class CombineSpec:
    columns: list[str] = _f(list, "columns combined, most significant first", factory=True)
    separator: str = _f("_", "text between parts of a combined class name")


@dataclass(frozen=True)
class TargetsConfig:
    label: str = _f("label", "the column that is the class label for training and metrics")
    bins: dict[str, BinSpec] = _f(dict, "derived columns by binning: `[targets.bins.age_group] column = \"age\"`", factory=True)
    maps: dict[str, MapSpec] = _f(dict, "derived columns by value mapping: `[targets.maps.mask] column = \"stem\"`", factory=True)
    combine: dict[str, CombineSpec] = _f(dict, "combined labels: `[targets.combine.label18] columns = [\"mask\", \"gender\", \"age_group\"]`", factory=True)
    heads: list[str] = _f(list, "several target columns trained as heads of one model (multi-task); empty = single head on `label`", factory=True)
    head_weights: list[float] | None = _f(None, "loss weight per head (same order as `heads`); default all 1")
    classes: list[str] | None = _f(None, "explicit class order for `label`; default sorted class names")


@dataclass(frozen=True)
class SplitConfig:
    folds: int = _f(5, "number of folds for k-fold cross-validation")
    group: str | None = _f(None, "column whose values never straddle two folds (person, photo, patient)")
    stratify: str | None = _f(None, "column whose class shares each fold keeps; default the label")
    holdout: float | None = _f(None, "instead of k folds: one train/valid split with this valid fraction")
    seed: int = _f(42, "seed of the fold assignment")
    fold_column: str = _f("fold", "manifest column that holds a precomputed fold (used when present)")


@dataclass(frozen=True)
class ModelConfig:
    name: str = _f("resnet18", "any timm model name, e.g. `convnext_tiny`, `eva02_large_patch14_448.mim_m38m_ft_in22k_in1k`")
    pretrained: bool = _f(True, "start from pretrained weights (the hub, or `pretrained_file`)")
    pretrained_file: str | None = _f(None, "local weights (.safetensors or a state dict) instead of the hub", path=True)
    in_chans: int = _f(3, "input channels")
    drop_rate: float = _f(0.0, "dropout before the classifier")
    head_init: Literal["zero", "timm"] = _f(
        "zero", "a new classifier head on pretrained weights starts at `zero` (every class equally likely, no loss "
        "spike at the first steps) or with the model's own `timm` init; models trained from scratch keep their init")
    drop_path_rate: float | None = _f(None, "stochastic depth rate (models that support it)")
    channels_last: bool = _f(True, "channels-last memory format: 1.1-1.9x faster convolutions on CPU (oneDNN) and on tensor cores")
    compile: bool = _f(False, "wrap the model in torch.compile")
    kwargs: dict[str, Any] = _f(dict, "passed to timm.create_model untouched", factory=True)


@dataclass(frozen=True)
class AugConfig:
    preset: str = _f("light", "augmentation preset: none, light, medium, sketch, face")
    hflip: bool = _f(True, "random horizontal flip in training")
    resize: Literal["stretch", "center_crop", "letterbox", "random_resized_crop"] = _f(
        "stretch", "how images reach `data.image_size`")
    crop_pct: float = _f(1.0, "eval: resize to size/crop_pct then center-crop (1.0 = no crop)")
    scale: list[float] = _f(lambda: [0.5, 1.0], "random_resized_crop area range", factory=True)
    intermediate_size: int | None = _f(
        None, "resize every image so its shorter side is this many px (area filter when shrinking) before the resize "
        "to `data.image_size`, in training and prediction alike: native resolution and JPEG artefacts stop telling the "
        "classes apart (size/format shortcuts `clsctl eda` reports); pick one at or below most images' shorter side; "
        "unset = off")
    transforms: list[dict[str, Any]] = _f(list, "extra albumentations transforms by name, in order: `{ name = \"CLAHE\", p = 0.3 }`", factory=True)
    randaugment: str | None = _f(None, "timm RandAugment/AutoAugment string, e.g. `rand-m9-mstd0.5`")
    mixup_alpha: float = _f(0.0, "MixUp alpha (0 = off)")
    cutmix_alpha: float = _f(0.0, "CutMix alpha (0 = off)")
    mix_prob: float = _f(1.0, "probability of applying MixUp/CutMix to a batch")


@dataclass(frozen=True)
class LossComponent:
    name: str = _f("ce", "loss name")
    weight: float = _f(1.0, "weight in the sum")


@dataclass(frozen=True)
class LossConfig:
    name: str = _f("ce", "ce, weighted_ce, focal, soft_f1, soft_ce, or `sum` of `components`")
    label_smoothing: float = _f(0.1, "label smoothing of hard targets (ce, weighted_ce, soft_ce, focal)")
    class_weights: Literal["none", "inverse", "sqrt_inverse", "effective"] = _f(
        "none", "per-class weights from training counts (ce, weighted_ce, soft_ce, focal; weighted_ce defaults to inverse)")
    effective_beta: float = _f(0.999, "beta of the effective-number weights")
    gamma: float = _f(2.0, "focal loss focusing parameter")
    alpha: float | None = _f(None, "focal loss balance factor")
    components: list[LossComponent] = _f(list, "for name = \"sum\": `[{ name = \"ce\", weight = 1.0 }, { name = \"soft_f1\", weight = 0.5 }]`", factory=True)


@dataclass(frozen=True)
class OptimConfig:
    name: str = _f("adamw", "timm optimizer name: adamw, adam, sgd, lamb, ...")
    lr: float = _f(1e-3, "peak learning rate")
    weight_decay: float = _f(0.05, "weight decay (not applied to norms and biases)")
    momentum: float = _f(0.9, "momentum (sgd)")
    layer_decay: float | None = _f(None, "layer-wise LR decay (models timm supports)")
    kwargs: dict[str, Any] = _f(dict, "passed to timm.optim.create_optimizer_v2 untouched", factory=True)


@dataclass(frozen=True)
class SchedConfig:
    name: str = _f("cosine", "timm scheduler: cosine, tanh, step, multistep, plateau, poly, constant, wsd, none")
    warmup_epochs: int = _f(1, "linear warmup epochs")
    warmup_lr: float = _f(1e-5, "learning rate at the start of warmup")
    min_lr: float = _f(1e-6, "floor of the schedule")
    decay_epochs: float = _f(30, "step: epochs between decays")
    decay_rate: float = _f(0.1, "step/plateau: decay factor")
    kwargs: dict[str, Any] = _f(dict, "passed to timm.scheduler.create_scheduler_v2 untouched", factory=True)


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = _f(10, "training epochs per fold")
    batch_size: int = _f(32, "images per step per process")
    seed: int = _f(42, "seed of everything random in training")
    deterministic: bool = _f(False, "deterministic kernels: identical runs give identical metrics (slower)")
    precision: Literal["auto", "no", "fp16", "bf16"] = _f("auto", "mixed precision; auto = bf16 on GPUs that have it, else fp16 on GPU, no on CPU")
    grad_accum: int = _f(1, "gradient accumulation steps")
    grad_clip: float | None = _f(None, "clip gradient norm to this value")
    metric: str = _f("macro_f1", "selection metric for the best checkpoint and early stopping")
    patience: int | None = _f(5, "early stopping after this many epochs without improvement; unset = never")
    sampler: Literal["random", "balanced", "sqrt"] = _f(
        "random", "training sampler: balanced draws each class equally often, sqrt by the square root of its count")
    epoch_samples: int | None = _f(None, "samples per epoch for balanced/sqrt samplers; default the dataset size")
    ema: bool = _f(False, "keep an exponential moving average of the weights")
    ema_decay: float = _f(0.9998, "EMA decay")
    ema_validate: bool = _f(True, "validate and checkpoint the EMA weights (false: the raw weights)")
    log_with: list[Literal["tensorboard", "wandb", "mlflow"]] = _f(
        list, "experiment trackers (each needs its extra: uv sync --extra tensorboard); TensorBoard writes into "
        "the run's trackers/", factory=True)
    log_every: int = _f(50, "steps between plain progress lines when not on a terminal")
    keep_state: bool = _f(False, "keep a finished fold's resume state (folds/<k>/state/); by default it is removed")
    nonfinite: Literal["stop", "skip"] = _f(
        "stop", "a batch with a NaN/inf loss: stop fails the run keeping the last good checkpoint; skip drops the "
        "batch and counts it (nonfinite_skipped in metrics.csv and the fold's done.json)")


@dataclass(frozen=True)
class TTAConfig:
    views: list[str] = _f(list, "test-time views: hflip, vflip, scale:<f>, fivecrop, trainaug:<n>", factory=True)
    combine: Literal["mean_prob", "mean_logit"] = _f("mean_prob", "how views are combined")


@dataclass(frozen=True)
class SweepConfig:
    metric: str | None = _f(None, "what a trial is scored by (its CV mean over `folds`); unset = `train.metric`")
    direction: Literal["auto", "maximize", "minimize"] = _f(
        "auto", "auto = the metric's own (larger macro_f1, smaller log_loss); an explicit one must agree with it")
    trials: int | None = _f(20, "finished (complete or pruned) trials the study stops at, counted over every worker "
                           "and every invocation; unset = until `timeout`")
    timeout: float | None = _f(None, "seconds this invocation may start trials for; unset = no limit")
    sampler: Literal["tpe", "random", "grid", "cmaes"] = _f(
        "tpe", "tpe, random, grid (every combination; ranges need a `step`), cmaes (numeric keys; others are drawn at random)")
    pruner: Literal["median", "hyperband", "wilcoxon", "none"] = _f(
        "median", "median and hyperband stop a trial whose epochs fall behind; wilcoxon compares trials fold by fold "
        "(needs `folds` of 2 or more); none trains every trial to the end")
    folds: str = _f("0", "folds each trial trains: one fold (fast), a list such as `0,2`, or `all` (CV-scored trials)")
    seed: int | None = _f(None, "seed of the sampler (one worker reproduces its draws; give workers different seeds)")
    startup_trials: int = _f(5, "trials before the sampler models the space (tpe) and before the median pruner prunes")
    warmup_epochs: int = _f(1, "epochs a trial always trains before median/hyperband may stop it")
    p_threshold: float = _f(0.1, "wilcoxon: how sure (p-value) the test must be that a trial is worse than the best")
    heartbeat: int = _f(60, "seconds between a running trial's signs of life; a trial silent for twice as long "
                        "(or whose process on this machine is gone) is failed and retried")
    retries: int = _f(2, "times a trial whose worker died is retried")
    baseline: bool = _f(True, "a new study's first trial is the recipe's own values (when the space holds them), so "
                        "the best trial is measured against the hand-written recipe (not with the grid sampler)")
    space: dict[str, Any] = _f(
        dict, "search space by recipe key: `space.\"optim.lr\" = { low = 1e-5, high = 1e-2, log = true }`, "
        "`space.\"train.batch_size\" = { low = 16, high = 64, step = 16 }`, `space.\"loss.name\" = [\"ce\", \"focal\"]`",
        factory=True)


@dataclass(frozen=True)
class Recipe:
    name: str | None = _f(None, "run name; the run folder ends with it")
    description: str = _f("", "what this recipe is for")
    data: DataConfig = _f(DataConfig, "", factory=True)
    targets: TargetsConfig = _f(TargetsConfig, "", factory=True)
    split: SplitConfig = _f(SplitConfig, "", factory=True)
    model: ModelConfig = _f(ModelConfig, "", factory=True)
    aug: AugConfig = _f(AugConfig, "", factory=True)
    loss: LossConfig = _f(LossConfig, "", factory=True)
    optim: OptimConfig = _f(OptimConfig, "", factory=True)
    sched: SchedConfig = _f(SchedConfig, "", factory=True)
    train: TrainConfig = _f(TrainConfig, "", factory=True)
    tta: TTAConfig = _f(TTAConfig, "", factory=True)
    sweep: SweepConfig = _f(SweepConfig, "", factory=True)

    def to_toml(self) -> str:
        """The resolved recipe as TOML (what a run folder's ``recipe.toml`` holds)."""
        return recipe_to_toml(self)


SECTIONS: tuple[str, ...] = ("data", "targets", "split", "model", "aug", "loss", "optim", "sched", "train", "tta",
                             "sweep")


def _to_plain(value: Any, default: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return recipe_to_dict(value)
    if isinstance(value, dict):
        return {k: _to_plain(v, None) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_to_plain(v, None) for v in value]
    return value


def recipe_to_dict(recipe: Any) -> dict[str, Any]:
    """Plain nested dict of a recipe (or a section), fit for TOML.

    TOML has no null: an unset optional is left out when its default is unset too, and written as
    ``"none"`` when the default is set, so loading the dict back gives an equal recipe.
    """
    out: dict[str, Any] = {}
    for f in dataclasses.fields(recipe):
        value = getattr(recipe, f.name)
        default = f.default if f.default is not dataclasses.MISSING else None
        if value is None:
            if default is not None:
                out[f.name] = "none"
            continue
        out[f.name] = _to_plain(value, default)
    return out


def recipe_to_toml(recipe: Recipe) -> str:
    """The resolved recipe as TOML; ``load_recipe`` on it yields an equal recipe."""
    raw = recipe_to_dict(recipe)
    if recipe.sweep == SweepConfig():
        del raw["sweep"]  # only sweeps use it: a train run's recipe.toml stays as it was
    top = {k: v for k, v in raw.items() if k not in SECTIONS}
    sections = {k: raw[k] for k in SECTIONS if k in raw}
    return tomli_w.dumps(top) + ("\n" if top else "") + tomli_w.dumps(sections)
