"""Score new patients with a run's saved global model."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from healthsync.errors import HealthSyncError
from healthsync.ml.model import SavedModel
from healthsync.runs import runlog
from healthsync.runs.store import MetricsStore

ID_COLUMNS = ("patient_id", "id")


def load_saved_model(db: str | Path, run_id: str) -> SavedModel:
    """The run's final global model (encoding, federated scaling, weights)."""
    return SavedModel.from_bytes(runlog.load_model_blob(MetricsStore(db), run_id))


def read_patients(path: str | Path) -> pl.DataFrame:
    """A CSV or Parquet file of patients; one-line errors for missing or unreadable files."""
    path = Path(path)
    if not path.is_file():
        raise HealthSyncError(f"{path}: file not found")
    try:
        frame = pl.read_parquet(path) if path.suffix.lower() == ".parquet" else pl.read_csv(path)
    except Exception as err:  # polars raises several error types for bad files
        raise HealthSyncError(f"{path}: cannot read ({_first_line(err)})") from err
    if frame.is_empty():
        raise HealthSyncError(f"{path}: no patient rows")
    return frame


def predict_frame(model: SavedModel, patients: pl.DataFrame) -> pl.DataFrame:
    """``row`` (1-based), an id column if the input has one, and ``risk`` of the model's target."""
    risk = model.predict(patients)
    out = pl.DataFrame({"row": range(1, patients.height + 1)})
    for col in ID_COLUMNS:
        if col in patients.columns:
            out = out.with_columns(patients[col])
            break
    return out.with_columns(pl.Series(f"risk_{model.target}", risk))


def predict_file(db: str | Path, run_id: str, path: str | Path) -> pl.DataFrame:
    model = load_saved_model(db, run_id)
    patients = read_patients(path)
    try:
        return predict_frame(model, patients)
    except HealthSyncError as err:
        raise HealthSyncError(f"{path}: {err}") from err


def _first_line(err: Exception) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__
