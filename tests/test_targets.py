"""Tests for toolkit.data.targets: maps, bins, combined labels and class order."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest

from toolkit.config.schema import BinSpec, CombineSpec, MapSpec, TargetsConfig
from toolkit.data.targets import (
    apply_targets,
    bin_labels,
    check_classes,
    class_order,
    encode_labels,
    target_columns,
)
from toolkit.errors import DataError

MASK_ORDER = ["wear", "incorrect", "normal"]
GENDER_ORDER = ["male", "female"]
AGE_ORDER = ["<30", "30-59", ">=60"]


def mask_targets(**kwargs: object) -> TargetsConfig:
    """The mask-competition recipe: 3 mask states × 2 genders × 3 age groups = 18 classes."""
    return TargetsConfig(
        label="label18",
        maps={
            "mask": MapSpec(column="stem", values={r"mask\d*": "wear", "incorrect_mask": "incorrect",
                                                   "normal": "normal"}, regex=True),
            # Listed male first: a map's class order is the order of its target values.
            "sex": MapSpec(column="gender", values={"male": "male", "female": "female"}),
        },
        bins={"age_group": BinSpec(column="age", edges=[30, 60])},
        combine={"label18": CombineSpec(columns=["mask", "sex", "age_group"])},
        **kwargs,  # type: ignore[arg-type]
    )


def mask_frame() -> pd.DataFrame:
    """One row per (stem, gender, age) combination, in an order unrelated to the classes."""
    stems = {"wear": "mask3", "incorrect": "incorrect_mask", "normal": "normal"}
    ages = {"<30": 29, "30-59": 30, ">=60": 60}
    rows = [{"path": f"{s}_{g}_{a}.jpg", "stem": stems[s], "gender": g, "age": ages[a]}
            for s, g, a in itertools.product(MASK_ORDER, GENDER_ORDER, AGE_ORDER)]
    return pd.DataFrame(rows[::-1])


# ------------------------------------------------------------------------------------------
# Bins
# ------------------------------------------------------------------------------------------


def test_bin_default_labels() -> None:
    assert bin_labels("a", BinSpec(column="age", edges=[30, 60])) == ["<30", "30-59", ">=60"]
    assert bin_labels("a", BinSpec(column="age", edges=[30.0, 58.5])) == ["<30", "30-<58.5", ">=58.5"]


def test_bins_edge_value_goes_up_and_boundary_moves() -> None:
    df = pd.DataFrame({"age": [0, 29, 30, 57, 58, 59, 60, 99]})
    default = apply_targets(df, TargetsConfig(label="g", bins={"g": BinSpec(column="age", edges=[30, 60])}))
    assert default["g"].tolist() == ["<30", "<30", "30-59", "30-59", "30-59", "30-59", ">=60", ">=60"]

    moved = apply_targets(df, TargetsConfig(label="g", bins={"g": BinSpec(column="age", edges=[30, 58])}))
    assert moved["g"].tolist() == ["<30", "<30", "30-57", "30-57", ">=58", ">=58", ">=58", ">=58"]
    assert moved.loc[df["age"] == 57, "g"].item() == "30-57"
    assert moved.loc[df["age"] == 58, "g"].item() == ">=58"
    assert "g" not in df.columns  # a new frame; the input is untouched
    assert class_order(moved, "g", TargetsConfig(label="g", bins={"g": BinSpec(column="age", edges=[30, 58])})) \
        == ["<30", "30-57", ">=58"]


def test_bins_custom_labels_and_wrong_count() -> None:
    df = pd.DataFrame({"age": [10, 70]})
    t = TargetsConfig(label="g", bins={"g": BinSpec(column="age", edges=[30, 60], labels=["young", "mid", "old"])})
    assert apply_targets(df, t)["g"].tolist() == ["young", "old"]
    bad = TargetsConfig(label="g", bins={"g": BinSpec(column="age", edges=[30, 60], labels=["young", "old"])})
    with pytest.raises(DataError, match=r"targets\.bins\.g\.labels"):
        apply_targets(df, bad)


def test_bins_non_numeric_rows_named() -> None:
    df = pd.DataFrame({"age": ["12", "old", "40", None]})
    with pytest.raises(DataError, match="not numbers") as err:
        apply_targets(df, TargetsConfig(label="g", bins={"g": BinSpec(column="age", edges=[30])}))
    assert "row 2 ('old')" in err.value.message and "row 4" in err.value.message
    assert "row 1" not in err.value.message


def test_bins_unsorted_edges() -> None:
    df = pd.DataFrame({"age": [1]})
    with pytest.raises(DataError, match=r"targets\.bins\.g\.edges"):
        apply_targets(df, TargetsConfig(label="g", bins={"g": BinSpec(column="age", edges=[60, 30])}))


# ------------------------------------------------------------------------------------------
# Maps
# ------------------------------------------------------------------------------------------


def test_map_exact_and_regex() -> None:
    df = pd.DataFrame({"stem": ["mask1", "normal", "incorrect_mask", "mask"], "code": [1, 2, 1, 2]})
    t = TargetsConfig(label="mask", maps={
        "mask": MapSpec(column="stem", values={"mask.*": "wear", "incorrect_mask": "incorrect", ".*": "other"},
                        regex=True),
        "kind": MapSpec(column="code", values={"2": "b", "1": "a"}),  # keys compared as text
    })
    out = apply_targets(df, t)
    # "incorrect_mask" is not a full match of "mask.*"; ".*" only catches what nothing before did.
    assert out["mask"].tolist() == ["wear", "other", "incorrect", "wear"]
    assert out["kind"].tolist() == ["a", "b", "a", "b"]
    assert class_order(out, "kind", t) == ["b", "a"]  # order of first appearance in values
    assert class_order(out, "mask", t) == ["wear", "incorrect", "other"]


def test_map_unmapped_values_listed_with_keys() -> None:
    df = pd.DataFrame({"gender": ["male", "female", "unknown", "M"]})
    t = TargetsConfig(label="sex", maps={"sex": MapSpec(column="gender", values={"male": "m", "female": "f"})})
    with pytest.raises(DataError, match="not mapped") as err:
        apply_targets(df, t)
    msg = err.value.message
    assert "'unknown'" in msg and "'M'" in msg and "'male'" in msg and "'female'" in msg
    assert "targets.maps.sex" in msg


def test_missing_source_column_lists_columns() -> None:
    df = pd.DataFrame({"path": ["a"], "stem": ["x"]})
    t = TargetsConfig(label="m", maps={"m": MapSpec(column="stme", values={"x": "y"})})
    with pytest.raises(DataError, match="'stme'") as err:
        apply_targets(df, t)
    assert "path, stem" in err.value.message


# ------------------------------------------------------------------------------------------
# Combine
# ------------------------------------------------------------------------------------------


def test_combined_18_classes_follow_the_index_formula() -> None:
    t = mask_targets()
    out = apply_targets(mask_frame(), t)
    classes = class_order(out, "label18", t)
    assert len(classes) == 18
    assert classes[:4] == ["wear_male_<30", "wear_male_30-59", "wear_male_>=60", "wear_female_<30"]
    assert classes[-1] == "normal_female_>=60"

    codes = encode_labels(out, "label18", classes)
    assert codes.dtype == np.int64
    seen = set()
    for row, code in zip(out.itertuples(), codes, strict=True):
        i_mask, i_gender, i_age = MASK_ORDER.index(row.mask), GENDER_ORDER.index(row.sex), AGE_ORDER.index(row.age_group)
        assert code == (i_mask * 2 + i_gender) * 3 + i_age
        assert row.label18 == f"{row.mask}_{row.sex}_{row.age_group}"
        seen.add(int(code))
    assert seen == set(range(18))
    assert out.attrs["class_orders"]["label18"] == classes


def test_combined_classes_do_not_depend_on_present_rows() -> None:
    t = mask_targets()
    full = class_order(apply_targets(mask_frame(), t), "label18", t)
    few = apply_targets(mask_frame().iloc[[0, 7]], t)
    assert class_order(few, "label18", t) == full
    counts = check_classes(few, "label18", min_count=0, classes=full)
    assert list(counts) == full and sum(counts.values()) == 2
    with pytest.raises(DataError, match="16 class"):
        check_classes(few, "label18", min_count=1, classes=full)


def test_combine_with_plain_column_uses_sorted_values() -> None:
    df = pd.DataFrame({"a": ["y", "x", "y"], "b": [2, 1, 10]})
    t = TargetsConfig(label="ab", combine={"ab": CombineSpec(columns=["a", "b"], separator="/")})
    out = apply_targets(df, t)
    assert out["ab"].tolist() == ["y/2", "x/1", "y/10"]
    assert class_order(out, "ab", t) == ["x/1", "x/10", "x/2", "y/1", "y/10", "y/2"]


def test_combine_missing_column() -> None:
    df = pd.DataFrame({"a": ["x"]})
    with pytest.raises(DataError, match="'b'") as err:
        apply_targets(df, TargetsConfig(label="ab", combine={"ab": CombineSpec(columns=["a", "b"])}))
    assert "columns: a" in err.value.message


def test_combine_ambiguous_separator() -> None:
    df = pd.DataFrame({"a": ["x_y", "x"], "b": ["z", "y_z"]})
    with pytest.raises(DataError, match="same class name"):
        apply_targets(df, TargetsConfig(label="ab", combine={"ab": CombineSpec(columns=["a", "b"])}))


# ------------------------------------------------------------------------------------------
# Class order, labels, heads
# ------------------------------------------------------------------------------------------


def test_class_order_default_is_sorted_text() -> None:
    df = pd.DataFrame({"label": ["dog", "cat", "emu", "cat"]})
    assert class_order(df, "label", TargetsConfig()) == ["cat", "dog", "emu"]


def test_class_order_explicit_classes() -> None:
    df = pd.DataFrame({"label": ["dog", "cat", "dog"]})
    t = TargetsConfig(classes=["dog", "cat", "bird"])
    assert class_order(df, "label", t) == ["dog", "cat", "bird"]
    assert encode_labels(df, "label", ["dog", "cat", "bird"]).tolist() == [0, 1, 0]


def test_class_order_explicit_classes_with_unknown_values() -> None:
    df = pd.DataFrame({"label": ["dog", "cat", "emu", "yak"]})
    with pytest.raises(DataError, match="not in targets.classes") as err:
        class_order(df, "label", TargetsConfig(classes=["dog", "cat"]))
    assert "'emu'" in err.value.message and "'yak'" in err.value.message
    assert "'dog'" not in err.value.message.split("classes:")[0]


def test_class_order_repeated_class() -> None:
    df = pd.DataFrame({"label": ["dog"]})
    with pytest.raises(DataError, match="repeats"):
        class_order(df, "label", TargetsConfig(classes=["dog", "dog"]))


def test_encode_labels_unknown_value() -> None:
    df = pd.DataFrame({"label": ["a", "z"]})
    with pytest.raises(DataError, match="'z'"):
        encode_labels(df, "label", ["a", "b"])


def test_target_columns_and_label_check() -> None:
    assert target_columns(TargetsConfig()) == ["label"]
    t = mask_targets(heads=["mask", "sex", "age_group"])
    assert target_columns(t) == ["mask", "sex", "age_group"]
    out = apply_targets(mask_frame(), t)
    assert {"mask", "sex", "age_group", "label18"} <= set(out.columns)

    with pytest.raises(DataError, match="'label'") as err:
        apply_targets(pd.DataFrame({"path": ["a"], "cls": ["x"]}), TargetsConfig())
    assert "path, cls" in err.value.message
    with pytest.raises(DataError, match="'nope'"):
        apply_targets(mask_frame(), mask_targets(heads=["mask", "nope"]))


def test_apply_targets_without_label_skips_missing_sources() -> None:
    test_set = pd.DataFrame({"path": ["a.jpg"], "stem": ["mask2"], "gender": ["female"]})
    out = apply_targets(test_set, mask_targets(), require_label=False)
    assert out["mask"].tolist() == ["wear"]
    assert "age_group" not in out.columns and "label18" not in out.columns


def test_check_classes_counts() -> None:
    df = pd.DataFrame({"label": ["a", "a", "b", "c", "c", "c"]})
    assert check_classes(df, "label") == {"a": 2, "b": 1, "c": 3}
    with pytest.raises(DataError) as err:
        check_classes(df, "label", min_count=2)
    assert "'b': 1" in err.value.message and "'a'" not in err.value.message


def test_duplicate_target_name() -> None:
    t = TargetsConfig(label="x", maps={"x": MapSpec(column="a", values={"1": "2"})},
                      bins={"x": BinSpec(column="a", edges=[1])})
    with pytest.raises(DataError, match="both"):
        apply_targets(pd.DataFrame({"a": [1]}), t)
