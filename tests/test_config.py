"""Recipes: strict loading, extends chains, overrides, round trip, key listing."""

from __future__ import annotations

from pathlib import Path

import pytest

from toolkit.config import Recipe, iter_keys, load_recipe, parse_override, with_overrides
from toolkit.errors import RecipeError

REPO = Path(__file__).resolve().parents[1]


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_defaults_are_the_documented_ones():
    r = load_recipe()
    assert isinstance(r, Recipe)
    assert (r.optim.name, r.sched.name, r.loss.label_smoothing, r.train.metric) == ("adamw", "cosine", 0.1, "macro_f1")


def test_unknown_key_names_file_key_and_nearest(tmp_path):
    f = write(tmp_path / "r.toml", "[train]\nepoch = 3\n")
    with pytest.raises(RecipeError) as exc:
        load_recipe(f)
    msg = str(exc.value)
    assert str(f) in msg and "`train.epoch`" in msg and "did you mean `train.epochs`" in msg
    assert exc.value.exit_code == 2


def test_unknown_section_and_top_level_key_suggest(tmp_path):
    with pytest.raises(RecipeError, match="did you mean `train`"):
        load_recipe(write(tmp_path / "a.toml", "[trian]\nepochs = 3\n"))
    with pytest.raises(RecipeError, match="did you mean `train.epochs`"):
        load_recipe(write(tmp_path / "b.toml", "epochs = 3\n"))
    with pytest.raises(RecipeError, match="unknown key `targets.bins.age.colum`"):
        load_recipe(write(tmp_path / "c.toml", "[targets.bins.age]\ncolum = 'age'\n"))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[train]\nepochs = '3'\n", "`train.epochs` must be an integer"),
        ("[train]\nepochs = 3.5\n", "`train.epochs` must be an integer"),
        ("[train]\ndeterministic = 1\n", "`train.deterministic` must be a boolean"),
        ("[optim]\nlr = 'fast'\n", "`optim.lr` must be a number"),
        ("[train]\nprecision = 'bf61'\n", "did you mean `bf16`"),
        ("[data]\nextensions = '.png'\n", "`data.extensions` must be list of string"),
        ("[model]\nname = 3\n", "`model.name` must be a string"),
        ("train = 3\n", "`train` must be a table"),
    ],
)
def test_wrong_type_names_expected_type(tmp_path, text, expected):
    f = write(tmp_path / "r.toml", text)
    with pytest.raises(RecipeError) as exc:
        load_recipe(f)
    assert expected in str(exc.value) and str(f) in str(exc.value)


def test_int_is_accepted_for_float(tmp_path):
    r = load_recipe(write(tmp_path / "r.toml", "[optim]\nlr = 1\n"))
    assert r.optim.lr == 1.0 and isinstance(r.optim.lr, float)


def test_invalid_toml_is_a_recipe_error(tmp_path):
    with pytest.raises(RecipeError, match="not valid TOML"):
        load_recipe(write(tmp_path / "r.toml", "[train\nepochs = 3\n"))


def test_extends_chain_merges_and_paths_are_relative_to_their_file(tmp_path):
    write(tmp_path / "base" / "base.toml", '[data]\nroot = "imgs"\nimage_size = 64\n[train]\nepochs = 3\nbatch_size = 16\n'
          '[model.kwargs]\na = 1\n')
    write(tmp_path / "mid" / "mid.toml", 'extends = "../base/base.toml"\n[train]\nepochs = 4\n[model.kwargs]\nb = 2\n')
    leaf = write(tmp_path / "leaf.toml", 'extends = "mid/mid.toml"\n[train]\nseed = 7\n[data]\nmanifest = "m.csv"\n')
    r = load_recipe(leaf)
    assert (r.train.epochs, r.train.batch_size, r.train.seed) == (4, 16, 7)
    assert r.data.image_size == 64
    assert r.data.root == str((tmp_path / "base" / "imgs").resolve())
    assert r.data.manifest == str((tmp_path / "m.csv").resolve())
    assert r.model.kwargs == {"a": 1, "b": 2}


def test_extends_cycle_and_missing_parent(tmp_path):
    write(tmp_path / "a.toml", 'extends = "b.toml"\n')
    write(tmp_path / "b.toml", 'extends = "a.toml"\n')
    with pytest.raises(RecipeError, match="cycle"):
        load_recipe(tmp_path / "a.toml")
    with pytest.raises(RecipeError, match="does not exist"):
        load_recipe(write(tmp_path / "c.toml", 'extends = "nope.toml"\n'))
    with pytest.raises(RecipeError, match="does not exist"):
        load_recipe(tmp_path / "absent.toml")


def test_error_in_parent_names_the_parent_file(tmp_path):
    parent = write(tmp_path / "p.toml", "[train]\nepochz = 1\n")
    with pytest.raises(RecipeError) as exc:
        load_recipe(write(tmp_path / "c.toml", 'extends = "p.toml"\n'))
    assert str(parent) in str(exc.value)


def test_set_overrides_parse_toml_values(tmp_path):
    r = load_recipe(None, ["train.epochs=3", "aug.hflip=false", 'model.name="convnext_tiny"', "optim.lr=3e-4",
                           "aug.scale=[0.3, 1.0]", "model.name=resnet34", "train.patience=none",
                           "data.root=imgs", "data.root=none"])
    assert r.train.epochs == 3 and r.aug.hflip is False and r.model.name == "resnet34"
    assert r.optim.lr == pytest.approx(3e-4) and r.aug.scale == [0.3, 1.0] and r.train.patience is None
    assert r.data.root is None
    assert parse_override("model.kwargs.foo={a=1}") == ("model.kwargs.foo", {"a": 1})


def test_set_errors(tmp_path):
    with pytest.raises(RecipeError, match="did you mean `train.epochs`"):
        load_recipe(None, ["train.epoch=3"])
    with pytest.raises(RecipeError, match="must be an integer"):
        load_recipe(None, ['train.epochs="3"'])
    with pytest.raises(RecipeError, match="expected section.key=value"):
        load_recipe(None, ["train.epochs"])


def test_set_path_is_relative_to_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = load_recipe(None, ["data.root=imgs"])
    assert r.data.root == str(tmp_path / "imgs")


def test_round_trip_equal(tmp_path):
    base = write(tmp_path / "r.toml", '[data]\nroot = "imgs"\n[targets.bins.age_group]\ncolumn = "age"\nedges = [30, 58]\n'
                 '[targets.combine.label18]\ncolumns = ["mask", "gender", "age_group"]\n'
                 '[loss]\nname = "sum"\ncomponents = [{ name = "ce", weight = 1.0 }, { name = "soft_f1", weight = 0.5 }]\n'
                 '[aug]\ntransforms = [{ name = "CLAHE", p = 0.3, clip_limit = [1, 4] }]\n[train]\npatience = "none"\n')
    r = load_recipe(base, ["model.kwargs.global_pool='avg'"])
    dumped = tmp_path / "out" / "recipe.toml"
    write(dumped, r.to_toml())
    again = load_recipe(dumped)
    assert again == r
    assert again.train.patience is None and again.targets.bins["age_group"].edges == [30.0, 58.0]


def test_every_shipped_recipe_loads_and_validates():
    from toolkit.train.validate import validate_recipe

    recipes = sorted((REPO / "recipes").glob("*.toml"))
    names = {p.stem for p in recipes}
    assert {"quickstart", "lite0_finetune", "eva_ls", "convnext_ls", "effnet_b0_ce", "mask_multihead"} <= names
    for path in recipes:
        recipe = load_recipe(path)
        validate_recipe(recipe)
        header = path.read_text().splitlines()[0]
        assert header.startswith("# ") and len(header) > 20, f"{path.name} needs a comment header"


def test_with_overrides_and_keys_listing():
    r = with_overrides(load_recipe(), {"train.epochs": 2, "data.image_size": 32})
    assert (r.train.epochs, r.data.image_size) == (2, 32)
    keys = {k: (tp, default, meaning) for k, tp, default, meaning in iter_keys()}
    for k in ("data.root", "data.manifest", "data.image_size", "data.normalize", "model.name", "model.pretrained",
              "model.pretrained_file", "train.epochs", "train.batch_size", "train.seed", "train.deterministic",
              "train.precision", "loss.name", "loss.label_smoothing", "optim.name", "optim.lr", "sched.name",
              "aug.preset", "targets.bins.<name>.edges"):
        assert k in keys and keys[k][2], k
    assert keys["train.epochs"][:2] == ("integer", "10")
