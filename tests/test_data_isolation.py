"""Each hospital's rows stay in its own partition and are read only by its own accessor."""

from __future__ import annotations

import ast
import json
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from healthsync.data import load_federation, open_hospital
from healthsync.data.accessor import CACHE_DIR, HospitalAccessor
from healthsync.data.importer import HospitalFile, import_federation
from healthsync.data.synthetic import generate_federation
from healthsync.errors import HealthSyncError
from healthsync.ml.training import hospital_arrays

ROOT = Path(__file__).resolve().parent.parent


def test_accessor_returns_only_its_own_rows(data_federation):
    data_dir = data_federation.data_dir
    for info in data_federation.hospitals:
        accessor = open_hospital(data_dir, info.id)
        own = pl.read_parquet(data_dir / "hospitals" / info.id / "patients.parquet")
        assert accessor.rows().equals(own)
        assert accessor.train().height == info.n_train
        assert accessor.test().height == info.n_test
        assert set(accessor.train()["split"]) == {"train"}
        assert set(accessor.test()["split"]) == {"test"}
    first, second = (open_hospital(data_dir, h.id).rows() for h in data_federation.hospitals[:2])
    assert first.join(second, on=first.columns, how="inner").height == 0


@pytest.mark.parametrize(
    "hospital_id",
    ["../h0001", "h0000/../h0001", "h0001/", "/h0001", "H0001", " h0001", "", "..", "h9999"],
)
def test_crafted_ids_are_refused(data_federation, hospital_id):
    with pytest.raises(HealthSyncError, match="no hospital with id"):
        open_hospital(data_federation.data_dir, hospital_id)


def test_imported_hospitals_cannot_see_each_other(tmp_path):
    files = []
    for name in ("Alpha", "Beta"):
        path = tmp_path / f"{name}.csv"
        pl.DataFrame({"site": [name] * 12, "x": list(range(12)), "y": [0, 1] * 6}).write_csv(path)
        files.append(HospitalFile(name, path))
    federation = import_federation(tmp_path / "out", files, "y")
    assert set(open_hospital(federation, "alpha").rows()["site"]) == {"Alpha"}
    assert set(open_hospital(federation, "beta").rows()["site"]) == {"Beta"}


def test_symlink_to_another_hospital_is_refused(data_fresh_federation):
    hospitals = data_fresh_federation.data_dir / "hospitals"
    shutil.rmtree(hospitals / "h0000")
    (hospitals / "h0000").symlink_to(hospitals / "h0001", target_is_directory=True)
    with pytest.raises(HealthSyncError, match="outside hospital 'h0000'"):
        open_hospital(data_fresh_federation.data_dir, "h0000").rows()


def test_symlinked_partition_file_is_refused(data_fresh_federation):
    own = data_fresh_federation.data_dir / "hospitals" / "h0000" / "patients.parquet"
    own.unlink()
    own.symlink_to(data_fresh_federation.data_dir / "hospitals" / "h0001" / "patients.parquet")
    with pytest.raises(HealthSyncError, match="outside hospital"):
        open_hospital(data_fresh_federation.data_dir, "h0000").train()


def test_manifest_with_unsafe_id_is_refused(data_fresh_federation):
    path = data_fresh_federation.data_dir / "federation.json"
    raw = json.loads(path.read_text())
    raw["hospitals"][0]["id"] = "../h0001"
    path.write_text(json.dumps(raw))
    with pytest.raises(HealthSyncError, match="not filesystem-safe"):
        load_federation(data_fresh_federation.data_dir)


def test_partition_disagreeing_with_manifest_is_refused(data_fresh_federation):
    path = data_fresh_federation.data_dir / "hospitals" / "h0000" / "patients.parquet"
    rows = pl.read_parquet(path)
    rows.head(rows.height - 1).write_parquet(path)
    with pytest.raises(HealthSyncError, match="the manifest says"):
        open_hospital(data_fresh_federation.data_dir, "h0000").rows()


def test_missing_or_invalid_federation_is_a_clear_error(tmp_path):
    with pytest.raises(HealthSyncError, match="no such federation directory"):
        load_federation(tmp_path / "absent")
    with pytest.raises(HealthSyncError, match="not a federation"):
        load_federation(tmp_path)
    (tmp_path / "federation.json").write_text("{not json")
    with pytest.raises(HealthSyncError, match="unreadable manifest"):
        load_federation(tmp_path)
    (tmp_path / "federation.json").write_text(json.dumps({"format": "other/9"}))
    with pytest.raises(HealthSyncError, match="unsupported format"):
        load_federation(tmp_path)


def test_only_partition_files_hold_rows(data_fresh_federation):
    fed = data_fresh_federation
    data_dir = fed.data_dir
    files = sorted(str(p.relative_to(data_dir)) for p in data_dir.rglob("*") if p.is_file())
    expected = ["federation.json"] + [f"hospitals/{h.id}/patients.parquet" for h in fed.hospitals]
    assert files == sorted(expected)
    assert [p.name for p in data_dir.parent.iterdir()] == [data_dir.name]  # no staging left

    # Training keeps each hospital's encoded rows in its own folder, and nowhere else.
    own = {h.id: hospital_arrays(fed, h.id, fed.default_target) for h in fed.hospitals}
    files = sorted(str(p.relative_to(data_dir)) for p in data_dir.rglob("*") if p.is_file())
    caches = [f for f in files if f not in expected]
    assert len(caches) == len(fed.hospitals)
    for cache in caches:
        hospital, folder, _ = cache.removeprefix("hospitals/").split("/")
        assert folder == CACHE_DIR
        matrix = np.load(data_dir / cache)
        assert len(matrix) == fed.hospital(hospital).n_patients  # every row, labelled or not
        # The default target is incident: patients who had it at baseline have no label.
        matrix = matrix[~np.isnan(matrix[:, -2])]
        assert len(matrix) == len(own[hospital].y_train) + len(own[hospital].y_test)
        np.testing.assert_array_equal(matrix[matrix[:, -1] == 0, :-2], own[hospital].x_train)


def test_encoded_rows_are_reused_until_the_partition_changes(data_fresh_federation, monkeypatch):
    fed, target = data_fresh_federation, data_fresh_federation.default_target
    first = hospital_arrays(fed, "h0000", target)
    folder = fed.data_dir / "hospitals" / "h0000" / CACHE_DIR
    assert len(list(folder.glob("*.npy"))) == 1

    with monkeypatch.context() as patched:
        patched.setattr(HospitalAccessor, "_read", lambda self: pytest.fail("re-read the rows"))
        again = hospital_arrays(fed, "h0000", target)
    for field in ("x_train", "y_train", "x_test", "y_test"):
        np.testing.assert_array_equal(getattr(again, field), getattr(first, field))

    path = fed.data_dir / "hospitals" / "h0000" / "patients.parquet"
    frame = pl.read_parquet(path)
    numeric = next(f.name for f in fed.features if f.kind == "numeric")
    frame.with_columns(pl.col(numeric) + 1000.0).write_parquet(path)
    changed = hospital_arrays(fed, "h0000", target)
    assert not np.array_equal(changed.x_train, first.x_train)
    assert len(list(folder.glob("*.npy"))) == 1  # the stale matrix is gone


def test_encoded_rows_are_never_written_outside_the_hospitals_folder(
    data_fresh_federation, monkeypatch
):
    fed, target = data_fresh_federation, data_fresh_federation.default_target
    hospitals = fed.data_dir / "hospitals"
    (hospitals / "h0001" / CACHE_DIR).symlink_to(hospitals / "h0002", target_is_directory=True)
    at_risk = pl.col(fed.incident[target]) == 0  # the default target is incident
    expected = open_hospital(fed, "h0001").rows().filter(at_risk)
    arrays = hospital_arrays(fed, "h0001", target)
    assert len(arrays.y_train) + len(arrays.y_test) == expected.height
    assert sorted(p.name for p in (hospitals / "h0002").iterdir()) == ["patients.parquet"]

    monkeypatch.setattr(np, "save", lambda *a, **k: (_ for _ in ()).throw(OSError("read-only")))
    arrays = hospital_arrays(fed, "h0000", target)  # an unwritable folder goes without
    assert len(arrays.y_train) == open_hospital(fed, "h0000").train().filter(at_risk).height
    assert not list((hospitals / "h0000" / CACHE_DIR).glob("*.npy"))


def test_manifest_holds_schema_and_counts_only(tmp_path):
    small = generate_federation(tmp_path / "small", 3, patients=30, seed=9, heterogeneity=0)
    large = generate_federation(tmp_path / "large", 3, patients=3000, seed=9, heterogeneity=0)
    raw = json.loads((large.data_dir / "federation.json").read_text())
    assert set(raw) == {
        "format", "name", "source", "created_with", "outcomes", "default_target", "incident",
        "features", "hospitals",
    }  # fmt: skip
    for hospital in raw["hospitals"]:
        # No outcome figure: prevalences are released by each hospital's own gate instead
        # (docs/privacy.md), so the manifest cannot be played against the explorer.
        assert set(hospital) == {"id", "name", "n_train", "n_test", "kind"}
    for feature in raw["features"]:
        assert set(feature) == {"name", "kind", "categories", "unit"}
    # 100 times the patients, yet the manifest only grows by the digits of the counts.
    small_size = (small.data_dir / "federation.json").stat().st_size
    large_size = (large.data_dir / "federation.json").stat().st_size
    assert 0 < large_size - small_size <= 20  # count digits


def test_imported_values_never_reach_the_manifest(tmp_path):
    path = tmp_path / "h.csv"
    sentinel = [1234.5678 + i for i in range(12)]
    pl.DataFrame({"marker": sentinel, "y": [0, 1] * 6}).write_csv(path)
    federation = import_federation(tmp_path / "out", [HospitalFile("H", path)], "y")
    text = (federation.data_dir / "federation.json").read_text()
    assert "1234" not in text and "1245" not in text
    assert open_hospital(federation, "h").rows()["marker"].to_list() == sentinel


def _references(path: Path, names: set[str]) -> set[str]:
    """Which of ``names`` (or the partition file name) a module's code, not its prose, uses."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    prose = {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Expr)}  # docstrings
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            found.add(node.id)
        elif isinstance(node, ast.Attribute):
            found.add(node.attr)
        elif isinstance(node, ast.alias):
            found.add(node.name)
        elif isinstance(node, ast.Constant) and id(node) not in prose:
            found.add(str(node.value))
    hits = found & names
    if any("patients.parquet" in text for text in found):
        hits.add("patients.parquet")
    return hits


def test_no_other_code_locates_partition_files():
    """Only the accessor reads partitions; the writers and the layout constants are the exceptions."""
    allowed = {"accessor.py", "manifest.py", "output.py"}
    names = {"partition_path", "PARTITION_NAME", "HOSPITALS_DIR"}
    offenders = {}
    for folder in ("healthsync", "simulation", "pages"):
        for path in (ROOT / folder).rglob("*.py"):
            if path.parent.name == "data" and path.name in allowed:
                continue
            found = _references(path, names)
            if found:
                offenders[str(path.relative_to(ROOT))] = sorted(found)
    assert offenders == {}


def test_a_second_preflight_reads_only_partitions_that_changed(data_fresh_federation, monkeypatch):
    """At 100,000 hospitals every start read every footer (50 s); unchanged ones are remembered."""
    from healthsync.data import accessor as accessor_module

    fed = data_fresh_federation
    read = []
    original = HospitalAccessor.preflight
    monkeypatch.setattr(
        HospitalAccessor, "preflight", lambda self: read.append(self.hospital.id) or original(self)
    )
    accessor_module.preflight(fed)
    assert sorted(read) == sorted(fed.hospital_ids)
    read.clear()
    accessor_module.preflight(fed)
    assert read == []

    # A partition rewritten since (even with as many rows) is read and checked again.
    path = fed.data_dir / "hospitals" / "h0001" / "patients.parquet"
    rows = pl.read_parquet(path)
    rows.drop("age").write_parquet(path)
    with pytest.raises(HealthSyncError, match=r"\(h0001\): partition file .* lacks columns age"):
        accessor_module.preflight(fed)
    assert read == ["h0001"]
    rows.write_parquet(path)
    accessor_module.preflight(fed)

    # A partition swapped for a symlink to another hospital's is not taken for the checked one.
    read.clear()
    own = fed.data_dir / "hospitals" / "h0000" / "patients.parquet"
    own_bytes = own.read_bytes()
    own.unlink()
    own.symlink_to(fed.data_dir / "hospitals" / "h0001" / "patients.parquet")
    with pytest.raises(HealthSyncError, match="outside hospital"):
        accessor_module.preflight(fed)
    assert read == ["h0000"]

    # A hospital's folder moved elsewhere and put back as a symlink keeps its partition's
    # own stamp; the folder's is stamped too, so it is checked (and refused) again.
    own.unlink()
    own.write_bytes(own_bytes)
    accessor_module.preflight(fed)
    read.clear()
    hospitals = fed.data_dir / "hospitals"
    moved = fed.data_dir.parent / "moved-h0002"
    (hospitals / "h0002").rename(moved)
    (hospitals / "h0002").symlink_to(moved, target_is_directory=True)
    with pytest.raises(HealthSyncError, match="outside hospital"):
        accessor_module.preflight(fed)
    assert read == ["h0002"]


def test_a_changed_manifest_checks_every_partition_again(data_fresh_federation, monkeypatch):
    from healthsync.data import accessor as accessor_module

    fed = data_fresh_federation
    accessor_module.preflight(fed)
    manifest = fed.data_dir / "federation.json"
    raw = json.loads(manifest.read_text())
    raw["hospitals"][2]["n_train"] += 1
    manifest.write_text(json.dumps(raw))
    with pytest.raises(HealthSyncError, match=r"\(h0002\): partition file .* the manifest says"):
        accessor_module.preflight(load_federation(fed.data_dir))
