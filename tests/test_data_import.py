"""``healthsync data import``: one file per hospital, checked before anything is written."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from healthsync.cli import main
from healthsync.data import load_federation, open_hospital
from healthsync.data.importer import HospitalFile, hospital_id, import_federation


def _hospital(n: int, offset: int = 0, **overrides: list) -> pl.DataFrame:
    columns = {
        "age": [30 + (i + offset) % 50 for i in range(n)],
        "ward": ["cardio" if i % 3 else "renal" for i in range(n)],
        "bmi": [20.5 + ((i + offset) % 17) for i in range(n)],
        "readmitted": ["yes" if i % 4 == 0 else "no" for i in range(n)],
    }
    columns.update(overrides)
    return pl.DataFrame(columns)


def _import(tmp_path: Path, capsys, *sources: str, extra: tuple[str, ...] = ()) -> tuple[int, str]:
    code = main(
        [
            "data",
            "import",
            "--out",
            str(tmp_path / "out"),
            "--target",
            "readmitted",
            *extra,
            *sources,
        ]
    )
    return code, capsys.readouterr().err


@pytest.fixture
def data_exports(tmp_path: Path) -> list[str]:
    """Three hospitals' exports: two CSV, one Parquet, one with an extra ward."""
    _hospital(30).write_csv(tmp_path / "anne.csv")
    _hospital(24, offset=7, ward=["icu"] * 24).write_csv(tmp_path / "belair.csv")
    _hospital(20, offset=3).write_parquet(tmp_path / "north.parquet")
    return [
        f"St. Anne's={tmp_path / 'anne.csv'}",
        f"Bélair Clinic={tmp_path / 'belair.csv'}",
        f"North={tmp_path / 'north.parquet'}",
    ]


def test_import_keeps_each_file_as_its_hospital(tmp_path, capsys, data_exports):
    code, _ = _import(tmp_path, capsys, *data_exports)
    assert code == 0
    federation = load_federation(tmp_path / "out")
    assert federation.source == "import"
    assert federation.outcomes == ("readmitted",) and federation.default_target == "readmitted"
    assert [h.id for h in federation.hospitals] == ["st-anne-s", "belair-clinic", "north"]
    assert [h.name for h in federation.hospitals] == ["St. Anne's", "Bélair Clinic", "North"]
    assert [h.n_patients for h in federation.hospitals] == [30, 24, 20]
    kinds = {f.name: (f.kind, f.categories) for f in federation.features}
    assert kinds == {
        "age": ("numeric", None),
        "ward": ("categorical", ("cardio", "icu", "renal")),  # sorted union
        "bmi": ("numeric", None),
    }
    rows = open_hospital(federation, "belair-clinic").rows()
    assert rows.columns == ["age", "ward", "bmi", "readmitted", "split"]
    assert rows.schema["age"] == pl.Float64 and rows.schema["readmitted"] == pl.Int8
    assert rows["age"].to_list() == [float(a) for a in _hospital(24, offset=7)["age"]]
    assert rows["readmitted"].to_list() == [1 if i % 4 == 0 else 0 for i in range(24)]
    assert set(rows["ward"]) == {"icu"}


def test_seeded_split_is_reproducible_and_sized(tmp_path, capsys, data_exports):
    extra = ("--seed", "4", "--test-fraction", "0.25")
    assert _import(tmp_path / "a", capsys, *data_exports, extra=extra)[0] == 0
    assert _import(tmp_path / "b", capsys, *data_exports, extra=extra)[0] == 0
    for info in load_federation(tmp_path / "a" / "out").hospitals:
        assert 0.15 <= info.n_test / info.n_patients <= 0.35
        first = (tmp_path / "a" / "out" / "hospitals" / info.id / "patients.parquet").read_bytes()
        second = (tmp_path / "b" / "out" / "hospitals" / info.id / "patients.parquet").read_bytes()
        assert first == second


def test_split_column_is_kept_exactly(tmp_path, capsys):
    split = ["test" if i in (2, 3, 11) else "train" for i in range(12)]
    _hospital(12, fold=split).write_csv(tmp_path / "a.csv")
    _hospital(10, fold=["train"] * 9 + ["test"]).write_csv(tmp_path / "b.csv")
    code, _ = _import(
        tmp_path,
        capsys,
        f"A={tmp_path / 'a.csv'}",
        f"B={tmp_path / 'b.csv'}",
        extra=("--split-column", "fold"),
    )
    assert code == 0
    federation = load_federation(tmp_path / "out")
    assert "fold" not in federation.feature_names
    assert open_hospital(federation, "a").rows()["split"].to_list() == split
    assert federation.hospital("b").n_test == 1


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([0, 1] * 6, [0, 1] * 6),
        (["TRUE", "false"] * 6, [1, 0] * 6),
        (["No", "Yes"] * 6, [0, 1] * 6),
        ([True, False] * 6, [1, 0] * 6),
    ],
)
def test_binary_target_spellings(tmp_path, values, expected):
    path = tmp_path / "h.parquet"
    _hospital(12, readmitted=values).write_parquet(path)
    federation = import_federation(tmp_path / "out", [HospitalFile("H", path)], "readmitted")
    assert open_hospital(federation, "h").rows()["readmitted"].to_list() == expected


def test_parquet_types_are_kept(tmp_path):
    path = tmp_path / "h.parquet"
    frame = _hospital(12).with_columns(
        pl.col("ward").cast(pl.Categorical),
        pl.col("age").cast(pl.Int16),
        pl.Series("smoker", [True, False] * 6),
    )
    frame.write_parquet(path)
    federation = import_federation(tmp_path / "out", [HospitalFile("H", path)], "readmitted")
    kinds = {f.name: (f.kind, f.categories) for f in federation.features}
    assert kinds["ward"] == ("categorical", ("cardio", "renal"))
    assert kinds["age"] == ("numeric", None)
    assert kinds["smoker"] == ("categorical", ("false", "true"))
    rows = open_hospital(federation, "h").rows()
    assert rows["age"].to_list() == [float(a) for a in frame["age"]]


def test_hospital_ids_are_filesystem_safe():
    assert hospital_id("St. Anne's / Ward 7") == "st-anne-s-ward-7"
    assert hospital_id("../../etc") == "etc"
    with pytest.raises(ValueError, match="needs at least one letter or digit"):
        hospital_id("***")


def test_names_in_any_script_are_welcome_and_stay_distinct(tmp_path):
    """``病院=b.csv`` was refused ("needs at least one letter or digit")."""
    paths = []
    for stem in ("a", "b", "c"):
        paths.append(tmp_path / f"{stem}.parquet")
        _hospital(12).write_parquet(paths[-1])
    names = ["病院", "医院", "Hôpital Saint-Éloi"]
    files = [HospitalFile(n, p) for n, p in zip(names, paths, strict=True)]
    federation = import_federation(tmp_path / "out", files, "readmitted")
    assert [h.name for h in federation.hospitals] == names  # shown as written
    ids = [h.id for h in federation.hospitals]
    assert len(set(ids)) == 3 and ids[2] == "hopital-saint-eloi"
    assert all(i.startswith("site-") for i in ids[:2])
    assert open_hospital(federation, ids[0]).rows().height == 12


def _bad_inputs(tmp: Path) -> dict[str, tuple[list[str], tuple[str, ...], str]]:
    """Each bad input: (sources, extra flags, expected message fragment)."""
    good = tmp / "good.csv"
    _hospital(20).write_csv(good)
    files = {
        "no_target.csv": _hospital(20).drop("readmitted"),
        "three_values.csv": _hospital(20, readmitted=["yes", "no", "maybe", "no"] * 5),
        "two_unknown.csv": _hospital(20, readmitted=["pos", "neg"] * 10),
        "other_columns.csv": _hospital(20).rename({"bmi": "weight"}),
        "header_only.csv": _hospital(0),
        "text_age.csv": _hospital(20, age=["old"] + ["40"] * 19),
        "tiny.csv": _hospital(7),
        "all_train.csv": _hospital(20, fold=["train"] * 20),
        "validation.csv": _hospital(20, fold=["train"] * 15 + ["validation"] * 5),
        "gaps.csv": _hospital(20, bmi=[None] + [25.0] * 19),
        "split_named.csv": _hospital(20, split=["train"] * 20),
        "all_no.csv": _hospital(20, readmitted=["no"] * 20),
    }
    for name, frame in files.items():
        frame.write_csv(tmp / name)
    _hospital(20, fold=["train"] * 16 + ["test"] * 4).write_csv(tmp / "good_fold.csv")
    (tmp / "empty.csv").write_bytes(b"")
    (tmp / "garbage.parquet").write_bytes(b"not a parquet file")
    (tmp / "notes.txt").write_text("age\n1\n")
    g = f"Good={good}"
    fold = ("--split-column", "fold")
    return {
        "missing target": (
            [g, f"X={tmp / 'no_target.csv'}"],
            (),
            "no_target.csv: no target column 'readmitted'",
        ),
        "non-binary target": (
            [g, f"X={tmp / 'three_values.csv'}"],
            (),
            "three_values.csv: target 'readmitted' is not binary",
        ),
        "unknown binary spelling": (
            [f"X={tmp / 'two_unknown.csv'}"],
            (),
            "two_unknown.csv: target 'readmitted' is not binary",
        ),
        "columns differ": (
            [g, f"X={tmp / 'other_columns.csv'}"],
            (),
            "other_columns.csv: columns differ from",
        ),
        "empty file": ([g, f"X={tmp / 'empty.csv'}"], (), "empty.csv: empty file"),
        "header only": ([g, f"X={tmp / 'header_only.csv'}"], (), "header_only.csv: no rows"),
        "unreadable": ([g, f"X={tmp / 'garbage.parquet'}"], (), "garbage.parquet: unreadable"),
        "mixed column": (
            [g, f"X={tmp / 'text_age.csv'}"],
            (),
            "text_age.csv: column 'age' has non-numeric value 'old' but is numeric in",
        ),
        "duplicated name": ([g, f"Good={tmp / 'tiny.csv'}"], (), "duplicated hospital name 'Good'"),
        "same id": ([g, f"good={tmp / 'tiny.csv'}"], (), "both give the id 'good'"),
        "too few rows": ([g, f"X={tmp / 'tiny.csv'}"], (), "tiny.csv: only 7 rows"),
        "no test rows": (
            [f"X={tmp / 'all_train.csv'}"],
            fold,
            "all_train.csv: split column 'fold' has no test rows",
        ),
        "bad split value": (
            [f"X={tmp / 'validation.csv'}"],
            fold,
            "must be 'train' or 'test', found 'validation'",
        ),
        "no split column": ([g], fold, "good.csv: no split column 'fold'"),
        "missing values": (
            [g, f"X={tmp / 'gaps.csv'}"],
            (),
            "gaps.csv: column 'bmi' has 1 missing value",
        ),
        "reserved split": ([f"X={tmp / 'split_named.csv'}"], (), "column 'split' is reserved"),
        "one class": ([f"X={tmp / 'all_no.csv'}"], (), "target 'readmitted' is 0 on every row"),
        "bad syntax": ([g, "just-a-file.csv"], (), "'just-a-file.csv': expected NAME=FILE"),
        "empty name": ([f"={good}"], (), "expected NAME=FILE"),
        "missing file": ([g, f"X={tmp / 'absent.csv'}"], (), "absent.csv: no such file"),
        "wrong type": (
            [g, f"X={tmp / 'notes.txt'}"],
            (),
            "notes.txt: unsupported file type '.txt'",
        ),
        "bad fraction": (
            [g],
            ("--test-fraction", "1.5"),
            "--test-fraction must be between 0 and 1",
        ),
        "target is split": (
            [f"X={tmp / 'good_fold.csv'}"],
            ("--split-column", "readmitted"),
            "both 'readmitted'",
        ),
    }


BAD_CASES = (
    "missing target", "non-binary target", "unknown binary spelling", "columns differ",
    "empty file", "header only", "unreadable", "mixed column", "duplicated name", "same id",
    "too few rows", "no test rows", "bad split value", "no split column", "missing values",
    "reserved split", "one class", "bad syntax", "empty name", "missing file", "wrong type",
    "bad fraction", "target is split",
)  # fmt: skip


def test_every_bad_input_is_covered(tmp_path):
    assert set(_bad_inputs(tmp_path)) == set(BAD_CASES)


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_input_is_one_line_error_and_writes_nothing(tmp_path, capsys, case):
    sources, extra, message = _bad_inputs(tmp_path)[case]
    code, err = _import(tmp_path, capsys, *sources, extra=extra)
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert message in err
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_failed_import_leaves_existing_federation_unchanged(tmp_path, capsys, data_exports):
    assert _import(tmp_path, capsys, *data_exports)[0] == 0
    before = {p: p.read_bytes() for p in (tmp_path / "out").rglob("*") if p.is_file()}
    _hospital(5).write_csv(tmp_path / "tiny.csv")
    code, err = _import(
        tmp_path, capsys, *data_exports, f"Tiny={tmp_path / 'tiny.csv'}", extra=("--force",)
    )
    assert code == 2 and "tiny.csv: only 5 rows" in err
    assert {p: p.read_bytes() for p in (tmp_path / "out").rglob("*") if p.is_file()} == before
