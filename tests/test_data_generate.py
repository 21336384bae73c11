"""``healthsync data generate``: reproducible, calibrated, heterogeneous, atomic."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from healthsync.cli import main
from healthsync.data import Federation, load_federation, open_hospital, population
from healthsync.data import output as output_module
from healthsync.data.synthetic import generate_federation, hospital_sizes
from healthsync.errors import HealthSyncError
from healthsync.ml.metrics import auc_score
from healthsync.ml.training import hospital_arrays


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def _pooled(federation: Federation, split: str | None = None) -> pl.DataFrame:
    frames = []
    for info in federation.hospitals:
        accessor = open_hospital(federation, info.id)
        frames.append({"train": accessor.train, "test": accessor.test}.get(split, accessor.rows)())
    return pl.concat(frames)


def test_same_arguments_give_identical_bytes(tmp_path):
    generate_federation(tmp_path / "a", hospitals=12, patients=60, seed=5, heterogeneity=0.7)
    generate_federation(tmp_path / "b", hospitals=12, patients=60, seed=5, heterogeneity=0.7)
    first, second = _files(tmp_path / "a"), _files(tmp_path / "b")
    assert len(first) == 13
    assert first == second


def test_another_seed_gives_other_patients(tmp_path):
    generate_federation(tmp_path / "a", hospitals=2, patients=40, seed=1)
    generate_federation(tmp_path / "b", hospitals=2, patients=40, seed=2)
    a = open_hospital(tmp_path / "a", "h0000").rows()
    b = open_hospital(tmp_path / "b", "h0000").rows()
    assert not a.equals(b)


def test_manifest_describes_schema_and_hospitals(data_federation):
    raw = json.loads((data_federation.data_dir / "federation.json").read_text())
    assert raw["format"] == "healthsync-federation/1"
    assert raw["source"] == "synthetic"
    assert raw["created_with"] == {
        "generator": "healthsync-synthetic/2",
        "hospitals": 6,
        "patients": 80,
        "seed": 3,
        "heterogeneity": 0.6,
    }
    assert raw["outcomes"] == ["diabetes", "hypertension", "diabetes_5y", "hypertension_5y"]
    assert raw["default_target"] == "diabetes_5y"
    assert raw["incident"] == {"diabetes_5y": "diabetes", "hypertension_5y": "hypertension"}
    features = {f["name"]: f for f in raw["features"]}
    assert list(features) == [
        "age", "sex", "bmi", "systolic_bp", "diastolic_bp", "fasting_glucose", "hba1c",
        "total_cholesterol", "hdl_cholesterol", "smoking", "physical_activity",
        "family_history_diabetes",
    ]  # fmt: skip
    assert features["smoking"]["categories"] == ["never", "former", "current"]
    assert features["sex"] == {
        "name": "sex",
        "kind": "categorical",
        "categories": ["F", "M"],
        "unit": None,
    }
    assert features["fasting_glucose"] == {
        "name": "fasting_glucose", "kind": "numeric", "categories": None, "unit": "mg/dL"
    }  # fmt: skip
    hospitals = raw["hospitals"]
    assert [h["id"] for h in hospitals] == [f"h{i:04d}" for i in range(6)]
    assert sum(h["n_train"] + h["n_test"] for h in hospitals) == 6 * 80
    assert len({h["name"] for h in hospitals}) == 6
    assert {h["kind"] for h in hospitals} <= {
        "teaching centre",
        "general hospital",
        "community clinic",
    }
    loaded = load_federation(data_federation.data_dir)
    assert loaded == data_federation
    assert loaded.n_patients == 480
    assert loaded.hospital("h0002").kind == hospitals[2]["kind"]


def test_partitions_are_typed_and_split_about_80_20(data_federation):
    rows = _pooled(data_federation)
    assert rows.columns == [
        *data_federation.feature_names, "diabetes", "hypertension", "diabetes_5y",
        "hypertension_5y", "split",
    ]  # fmt: skip
    assert rows.schema["age"] == pl.Float64
    assert rows.schema["smoking"] == pl.String
    assert rows.schema["diabetes"] == pl.Int8 and rows.schema["diabetes_5y"] == pl.Int8
    assert set(rows["split"].unique()) == {"train", "test"}
    # Only the incident outcomes have empty values (patients not at risk of them).
    assert rows.drop("diabetes_5y", "hypertension_5y").null_count().sum_horizontal().item() == 0
    for info in data_federation.hospitals:
        assert info.n_patients >= 20
        assert 0.1 <= info.n_test / info.n_patients <= 0.3
        assert info.n_train >= 10


def test_population_matches_published_ranges(tmp_path):
    federation = generate_federation(tmp_path / "f", hospitals=8, patients=500, heterogeneity=0)
    rows = _pooled(federation)
    assert rows.height == 4000
    assert 0.08 <= rows["diabetes"].mean() <= 0.16  # IDF 10.5 %, NHANES 15.8 %
    assert 0.30 <= rows["hypertension"].mean() <= 0.46  # WHO 33 %, NHANES 45 %
    assert 27.0 <= rows["bmi"].mean() <= 29.5
    assert 45 <= rows["age"].mean() <= 55 and rows["age"].min() >= 18 and rows["age"].max() <= 90
    assert 115 <= rows["systolic_bp"].mean() <= 132
    assert 5.3 <= rows["hba1c"].mean() <= 5.9
    assert 175 <= rows["total_cholesterol"].mean() <= 200
    assert 0.07 <= (rows["smoking"] == "current").mean() <= 0.2
    assert 0.45 <= (rows["sex"] == "F").mean() <= 0.57
    assert 0.25 <= (rows["family_history_diabetes"] == "yes").mean() <= 0.35
    corr = rows.select(
        pl.corr("age", "systolic_bp").alias("age_bp"),
        pl.corr("bmi", "fasting_glucose").alias("bmi_glucose"),
        pl.corr("bmi", "systolic_bp").alias("bmi_bp"),
        pl.corr("hba1c", "fasting_glucose").alias("hba1c_glucose"),
    ).row(0, named=True)
    assert corr["age_bp"] > 0.3 and corr["bmi_glucose"] > 0.1 and corr["bmi_bp"] > 0.1
    assert corr["hba1c_glucose"] > 0.8
    by_diabetes = rows.group_by("diabetes").agg(pl.mean("hba1c")).sort("diabetes")["hba1c"]
    assert by_diabetes[1] - by_diabetes[0] > 1.0
    by_htn = rows.group_by("hypertension").agg(pl.mean("systolic_bp")).sort("hypertension")
    assert by_htn["systolic_bp"][1] - by_htn["systolic_bp"][0] > 12


def _design(federation: Federation, rows: pl.DataFrame) -> np.ndarray:
    columns = []
    for spec in federation.features:
        if spec.categories is None:
            columns.append(rows[spec.name].to_numpy())
        else:
            columns += [
                (rows[spec.name] == c).to_numpy().astype(float) for c in spec.categories[1:]
            ]
    return np.column_stack(columns)


def _logistic_auc(x_train, y_train, x_test, y_test) -> float:
    mean, std = x_train.mean(0), x_train.std(0) + 1e-9

    def scaled(x):
        return np.column_stack([np.ones(len(x)), (x - mean) / std])

    z, w = scaled(x_train), np.zeros(x_train.shape[1] + 1)
    for _ in range(25):  # Newton steps with a little ridge
        p = 1 / (1 + np.exp(-z @ w))
        hessian = (z * (p * (1 - p))[:, None]).T @ z + 1e-3 * np.eye(len(w))
        w -= np.linalg.solve(hessian, z.T @ (p - y_train) + 1e-3 * w)
    return auc_score(y_test, scaled(x_test) @ w)


def test_both_outcomes_are_learnable(tmp_path):
    federation = generate_federation(tmp_path / "f", hospitals=8, patients=500, heterogeneity=0.5)
    train, test = _pooled(federation, "train"), _pooled(federation, "test")
    for outcome in ("diabetes", "hypertension"):
        auc = _logistic_auc(
            _design(federation, train), train[outcome].to_numpy(),
            _design(federation, test), test[outcome].to_numpy(),
        )  # fmt: skip
        assert auc > 0.85, outcome


def test_sizes_keep_the_mean_and_a_floor():
    rng = np.random.default_rng(0)
    assert hospital_sizes(rng, 5, 300, 0.0).tolist() == [300] * 5
    sizes = hospital_sizes(rng, 1000, 300, 1.0)
    assert sizes.sum() == 300_000 and sizes.min() >= 20
    assert sizes.max() > 5 * np.median(sizes)  # a few large centres, many small clinics


def _spread(federation: Federation) -> dict[str, float]:
    sizes = np.array([h.n_patients for h in federation.hospitals])
    per_site = [open_hospital(federation, h.id).rows() for h in federation.hospitals]
    return {
        "size_cv": sizes.std() / sizes.mean(),
        "diabetes_sd": float(np.std([r["diabetes"].mean() for r in per_site])),
        "sbp_sd": float(np.std([r["systolic_bp"].mean() for r in per_site])),
        "age_sd": float(np.std([r["age"].mean() for r in per_site])),
    }


def test_heterogeneity_one_spreads_hospitals_apart(tmp_path):
    iid = _spread(generate_federation(tmp_path / "iid", 30, 200, seed=4, heterogeneity=0))
    skewed = _spread(generate_federation(tmp_path / "skew", 30, 200, seed=4, heterogeneity=1))
    assert iid["size_cv"] == 0
    assert skewed["size_cv"] > 0.5
    assert skewed["diabetes_sd"] > 2 * iid["diabetes_sd"]
    assert skewed["sbp_sd"] > 2 * iid["sbp_sd"]
    assert skewed["age_sd"] > 2 * iid["age_sd"]


def test_cli_generates_with_one_line_summary(tmp_path, capsys):
    out = tmp_path / "fed"
    argv = ["data", "generate", "--hospitals", "3", "--patients", "30", "--out", str(out)]
    assert main(argv) == 0
    stdout = capsys.readouterr().out
    assert stdout.count("\n") == 1
    assert stdout.startswith("generated 3 hospitals, 90 patients")
    assert len(load_federation(out).hospitals) == 3


def test_cli_refuses_to_overwrite_without_force(tmp_path, capsys):
    out = tmp_path / "fed"
    assert (
        main(["data", "generate", "--hospitals", "2", "--patients", "20", "--out", str(out)]) == 0
    )
    before = _files(out)
    capsys.readouterr()
    assert main(["data", "generate", "--hospitals", "4", "--out", str(out)]) == 2
    assert "already holds a federation; pass --force" in capsys.readouterr().err
    assert _files(out) == before
    assert (
        main(
            [
                "data",
                "generate",
                "--hospitals",
                "4",
                "--patients",
                "20",
                "--out",
                str(out),
                "--force",
            ]
        )
        == 0
    )
    assert len(load_federation(out).hospitals) == 4
    assert [p.name for p in tmp_path.iterdir()] == ["fed"]  # no staging or backup left behind


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--hospitals", "0", "hospitals must be between 1"),
        ("--patients", "19", "patients (the mean per hospital) must be between 20"),
        ("--heterogeneity", "1.5", "heterogeneity must be between 0 and 1"),
        ("--heterogeneity", "-0.1", "heterogeneity must be between 0 and 1"),
        ("--seed", "-1", "seed must be zero or positive"),
    ],
)
def test_cli_rejects_bad_arguments(tmp_path, capsys, flag, value, message):
    out = tmp_path / "fed"
    assert main(["data", "generate", flag, value, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1
    assert not out.exists()


def test_refuses_a_folder_that_is_not_a_federation(tmp_path):
    out = tmp_path / "notes"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(ValueError, match="not empty and holds no federation"):
        generate_federation(out, hospitals=2, patients=20, force=True)
    assert (out / "keep.txt").read_text() == "mine"


def test_failure_midway_leaves_previous_federation_untouched(tmp_path, monkeypatch):
    out = tmp_path / "fed"
    generate_federation(out, hospitals=2, patients=20)
    before = _files(out)
    calls = []

    def failing_write(directory, hospital_id, rows):
        calls.append(hospital_id)
        if len(calls) == 3:
            raise OSError("disk full")
        return real_write(directory, hospital_id, rows)

    real_write = output_module.write_partition
    monkeypatch.setattr("healthsync.data.synthetic.write_partition", failing_write)
    with pytest.raises(OSError, match="disk full"):
        generate_federation(out, hospitals=5, patients=20, force=True)
    assert _files(out) == before
    assert [p.name for p in tmp_path.iterdir()] == ["fed"]
    with pytest.raises(OSError, match="disk full"):
        calls.clear()
        generate_federation(tmp_path / "new" / "fed", hospitals=5, patients=20)
    assert not (tmp_path / "new").exists()


def test_incident_outcomes_count_only_patients_free_at_baseline(tmp_path):
    federation = generate_federation(tmp_path / "f", hospitals=4, patients=400, heterogeneity=0.5)
    rows = _pooled(federation)
    for incident, baseline in federation.incident.items():
        prevalent = rows.filter(pl.col(baseline) == 1)
        at_risk = rows.filter(pl.col(baseline) == 0)
        assert prevalent.height > 0 and prevalent[incident].null_count() == prevalent.height
        assert at_risk[incident].null_count() == 0
        assert set(at_risk[incident].unique()) == {0, 1}
        # Training on the incident target sees exactly the patients at risk, no prevalent case.
        arrays = [hospital_arrays(federation, h.id, incident) for h in federation.hospitals]
        assert sum(len(a.y_train) + len(a.y_test) for a in arrays) == at_risk.height
        assert sum(int(a.y_train.sum() + a.y_test.sum()) for a in arrays) == at_risk[incident].sum()
    new_cases = rows.filter(pl.col("diabetes") == 0)["diabetes_5y"].mean()
    assert 0.05 <= new_cases <= 0.14  # about 9 % of patients free of diabetes within 5 years


@pytest.mark.parametrize("heterogeneity", [0.0, 0.9])
def test_best_achievable_auc_of_incident_outcomes_is_about_0_8(heterogeneity):
    # The generator's own true risk is the Bayes-optimal score: no model can rank better.
    rng = np.random.default_rng(11)
    sites = population.draw_site_effects(rng, np.zeros(50, dtype=bool), heterogeneity)
    incidence = population.draw_incidence_effects(rng, sites, heterogeneity)
    hospital = np.repeat(np.arange(50), 2000)
    columns = population.draw_patients(rng, sites, hospital, (np.random.default_rng(12), incidence))
    for outcome in population.INCIDENT:
        at_risk = ~np.isnan(columns[outcome])
        auc = auc_score(columns[outcome][at_risk].astype(int), columns[f"risk:{outcome}"][at_risk])
        assert 0.75 <= auc <= 0.85, (outcome, auc)


def test_incident_outcomes_leave_the_other_columns_as_they_were():
    sites = population.draw_site_effects(np.random.default_rng(1), np.zeros(3, dtype=bool), 0.5)
    incidence = population.draw_incidence_effects(np.random.default_rng(2), sites, 0.5)
    hospital = np.repeat(np.arange(3), 100)
    plain = population.draw_patients(np.random.default_rng(3), sites, hospital)
    both = population.draw_patients(
        np.random.default_rng(3), sites, hospital, (np.random.default_rng(4), incidence)
    )
    assert set(both) - set(plain) == {
        "diabetes_5y", "hypertension_5y", "risk:diabetes_5y", "risk:hypertension_5y"
    }  # fmt: skip
    for name, values in plain.items():
        np.testing.assert_array_equal(values, both[name], err_msg=name)


def test_incident_outcome_is_learnable_but_far_from_perfect(tmp_path):
    federation = generate_federation(tmp_path / "f", hospitals=8, patients=500, heterogeneity=0.5)
    train, test = _pooled(federation, "train"), _pooled(federation, "test")
    for outcome, baseline in federation.incident.items():
        tr, te = train.filter(pl.col(baseline) == 0), test.filter(pl.col(baseline) == 0)
        auc = _logistic_auc(
            _design(federation, tr), tr[outcome].to_numpy(),
            _design(federation, te), te[outcome].to_numpy(),
        )  # fmt: skip
        assert 0.65 <= auc <= 0.88, (outcome, auc)


def test_accessor_refuses_an_incident_value_for_a_prevalent_patient(tmp_path):
    federation = generate_federation(tmp_path / "f", hospitals=1, patients=200, seed=2)
    path = open_hospital(federation, "h0000").path
    rows = pl.read_parquet(path)
    rows.with_columns(
        pl.when(pl.col("diabetes") == 1)
        .then(0)
        .otherwise(pl.col("diabetes_5y"))
        .alias("diabetes_5y")
    ).write_parquet(path)
    with pytest.raises(HealthSyncError, match="'diabetes_5y' must be empty exactly for patients"):
        open_hospital(federation, "h0000").rows()
    rows.with_columns(pl.lit(None, pl.Int8).alias("diabetes")).write_parquet(path)
    with pytest.raises(HealthSyncError, match="missing values in diabetes"):
        open_hospital(federation, "h0000").rows()


@pytest.mark.parametrize(
    "incident",
    [["diabetes"], {"stroke_5y": "diabetes"}, {"diabetes_5y": "diabetes_5y"}],
)
def test_manifest_refuses_a_bad_incident_mapping(tmp_path, incident):
    federation = generate_federation(tmp_path / "f", hospitals=1, patients=40, seed=2)
    path = federation.data_dir / "federation.json"
    raw = json.loads(path.read_text())
    raw["incident"] = incident
    path.write_text(json.dumps(raw))
    with pytest.raises(HealthSyncError, match="incident"):
        load_federation(federation.data_dir)


def test_generated_data_has_each_hospitals_encoded_matrix_ready_for_the_first_run(
    tmp_path, monkeypatch
):
    """The first run on a new data set reads each hospital's cached matrix, not its partition."""
    from healthsync.data.accessor import HospitalAccessor
    from healthsync.ml.training import hospital_arrays

    assert (
        main(
            [
                "data",
                "generate",
                "--out",
                str(tmp_path / "fed"),
                "--hospitals",
                "3",
                "--patients",
                "40",
            ]
        )
        == 0
    )
    federation = load_federation(tmp_path / "fed")

    def no_reading(self, path):
        raise AssertionError(f"hospital {self.hospital.id}'s partition was parsed again")

    monkeypatch.setattr(HospitalAccessor, "_read", no_reading)
    for hospital in federation.hospital_ids:
        arrays = hospital_arrays(federation, hospital, federation.default_target)
        assert len(arrays.y_train) + len(arrays.y_test) > 0


def test_a_federation_hashes_its_hospitals_once(data_federation, monkeypatch):
    """Per-federation caches (the facts plan, ...) hash the federation on every call; at
    100,000 hospitals a hash over every hospital each time made publishing quadratic."""
    from dataclasses import replace

    from healthsync.data.manifest import HospitalInfo

    federation = replace(data_federation)  # a fresh object: nothing cached yet
    calls = []
    original = HospitalInfo.__hash__
    monkeypatch.setattr(HospitalInfo, "__hash__", lambda self: calls.append(1) or original(self))
    first = hash(federation)
    assert hash(federation) == first
    assert len(calls) == len(federation.hospitals)
    assert federation == replace(federation) and hash(replace(federation)) == first


def test_publishing_reads_each_hospitals_rows_once(tmp_path, monkeypatch):
    """Its own statistics and its encoded matrix come from one read of the partition (at
    100,000 hospitals a second read was about a tenth of publishing's time)."""
    from healthsync.cohort.facts import publish
    from healthsync.data.accessor import HospitalAccessor

    fed = generate_federation(tmp_path / "fed", hospitals=3, patients=60, seed=1)
    for cache in (fed.data_dir / "hospitals").glob("*/.cache"):
        shutil.rmtree(cache)  # as a federation published for the first time
    reads = []
    real = HospitalAccessor._read
    monkeypatch.setattr(
        HospitalAccessor,
        "_read",
        lambda self, path: reads.append(self.hospital.id) or real(self, path),
    )
    assert publish(fed) == 3
    assert sorted(reads) == sorted(fed.hospital_ids)
    assert all(list((fed.data_dir / "hospitals" / h / ".cache").glob("*.npy")) for h in reads)
