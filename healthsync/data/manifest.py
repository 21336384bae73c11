"""The federation manifest: what a federation directory holds, without any patient row.

``DIR/federation.json`` describes the schema (features, outcomes) and each
hospital's name and split sizes. The engine, the app and the CLI learn
everything they need about a federation from it, so nothing outside a
hospital's own accessor ever has to open a partition file.
"""

from __future__ import annotations

import functools
import json
import re
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

from healthsync.errors import HealthSyncError

FORMAT = "healthsync-federation/1"
MANIFEST_NAME = "federation.json"
HOSPITALS_DIR = "hospitals"
PARTITION_NAME = "patients.parquet"
SPLIT_COLUMN = "split"
SPLITS = ("train", "test")
SOURCES = ("synthetic", "import")
FEATURE_KINDS = ("numeric", "categorical")
#: Lower-case letters, digits, ``-`` and ``_``; safe as a folder name on any platform.
HOSPITAL_ID_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")

_HOSPITAL_FIELDS = ("id", "name", "n_train", "n_test")
_Fail = Callable[[str], HealthSyncError]


@dataclass(frozen=True)
class FeatureSpec:
    """One input column the models see.

    ``categories`` lists the allowed values of a categorical feature, so a
    hospital can one-hot encode consistently without seeing other hospitals'
    rows; it is ``None`` for numeric features.
    """

    name: str
    kind: Literal["numeric", "categorical"]
    categories: tuple[str, ...] | None = None
    unit: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The manifest form of this feature."""
        categories = list(self.categories) if self.categories is not None else None
        return {"name": self.name, "kind": self.kind, "categories": categories, "unit": self.unit}


@dataclass(frozen=True)
class HospitalInfo:
    """A hospital as the federation knows it: identity and split sizes, never rows.

    ``extras`` keeps any descriptive aggregates a manifest adds (for example
    ``kind``) so that tools can show them without the format changing.
    """

    id: str
    name: str
    n_train: int
    n_test: int
    extras: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def n_patients(self) -> int:
        """Patients in both splits."""
        return self.n_train + self.n_test

    @property
    def kind(self) -> str | None:
        """A descriptive kind such as ``"community clinic"``, if the manifest has one."""
        value = self.extras.get("kind")
        return value if isinstance(value, str) else None

    def to_dict(self) -> dict[str, Any]:
        """The manifest form of this hospital."""
        return {
            "id": self.id,
            "name": self.name,
            "n_train": self.n_train,
            "n_test": self.n_test,
            **self.extras,
        }


@dataclass(frozen=True)
class Federation:
    """A set of hospitals sharing one schema, as described by ``federation.json``.

    ``incident`` maps each incident outcome to the baseline outcome its
    patients must be free of: the incident column is empty (null) exactly for
    patients with that baseline outcome, and training on it uses only the others.
    """

    data_dir: Path
    name: str
    source: Literal["synthetic", "import"]
    outcomes: tuple[str, ...]
    default_target: str
    features: tuple[FeatureSpec, ...]
    hospitals: tuple[HospitalInfo, ...]
    created_with: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False)
    incident: Mapping[str, str] = field(default_factory=dict, hash=False)

    def hospital(self, hospital_id: str) -> HospitalInfo:
        """The hospital with this id; ``HealthSyncError`` if the federation has none."""
        info = self._by_id.get(hospital_id) if isinstance(hospital_id, str) else None
        if info is None:
            raise HealthSyncError(
                f"{self.data_dir / MANIFEST_NAME}: no hospital with id {hospital_id!r}"
            )
        return info

    def __hash__(self) -> int:
        return self._hash

    @cached_property
    def _hash(self) -> int:
        # Caches keyed by federation hash it on every call; over 100,000 hospitals each
        # time, publishing every hospital's facts was quadratic. Frozen: hash it once.
        return hash(
            (self.data_dir, self.name, self.source, self.outcomes, self.features, self.hospitals)
        )

    @cached_property
    def _by_id(self) -> dict[str, HospitalInfo]:
        # Federations can have 10,000+ hospitals; opening each must not scan them all.
        return {info.id: info for info in self.hospitals}

    @cached_property
    def hospital_ids(self) -> tuple[str, ...]:
        """Hospital ids in manifest order (built once: 100,000 hospitals are asked for often)."""
        return tuple(info.id for info in self.hospitals)

    @property
    def feature_names(self) -> tuple[str, ...]:
        """Feature column names in manifest order."""
        return tuple(spec.name for spec in self.features)

    @property
    def n_patients(self) -> int:
        """Patients across all hospitals and both splits."""
        return sum(info.n_patients for info in self.hospitals)

    def to_dict(self) -> dict[str, Any]:
        """The manifest form of this federation (what ``federation.json`` holds).

        ``incident`` is written only when there is one, so federations without
        incident outcomes keep their bytes.
        """
        incident = {"incident": dict(self.incident)} if self.incident else {}
        return {
            "format": FORMAT,
            "name": self.name,
            "source": self.source,
            "created_with": dict(self.created_with),
            "outcomes": list(self.outcomes),
            "default_target": self.default_target,
            **incident,
            "features": [spec.to_dict() for spec in self.features],
            "hospitals": [info.to_dict() for info in self.hospitals],
        }


def write_manifest(federation: Federation, directory: Path) -> Path:
    """Write ``federation.json`` for ``federation`` into ``directory``.

    Keys are written in a fixed order with no timestamp, so the same
    federation always produces the same bytes.
    """
    path = Path(directory) / MANIFEST_NAME
    text = json.dumps(federation.to_dict(), indent=2, ensure_ascii=False) + "\n"
    path.write_text(text, encoding="utf-8")
    return path


def load_federation(data_dir: str | Path) -> Federation:
    """Read and validate ``data_dir/federation.json``.

    Raises
    ------
    HealthSyncError
        If the directory or manifest is missing, or the manifest is not a valid
        ``healthsync-federation/1`` document.
    """
    data_dir = Path(data_dir)
    path = data_dir / MANIFEST_NAME
    if not data_dir.is_dir():
        raise HealthSyncError(f"{data_dir}: no such federation directory")
    if not path.is_file():
        raise HealthSyncError(
            f"{data_dir}: not a federation (no {MANIFEST_NAME}); "
            "create one with `healthsync data generate` or `healthsync data import`"
        )
    try:
        stat = path.stat()
    except OSError as err:
        raise HealthSyncError(f"{path}: unreadable manifest ({err})") from None
    return _parsed(str(data_dir), stat.st_mtime_ns, stat.st_size, stat.st_ino)


@functools.lru_cache(maxsize=8)
def _parsed(data_dir: str, mtime_ns: int, size: int, inode: int) -> Federation:
    """The manifest at ``data_dir``, parsed once per version of the file.

    A 100,000-hospital manifest takes seconds to parse, and a page names
    hospitals through it several times a render; the file's modification time,
    size and inode tell a rewritten manifest (written atomically, so a new
    inode) from the one parsed. ``Federation`` is frozen, so sharing is safe.
    """
    path = Path(data_dir) / MANIFEST_NAME
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise HealthSyncError(f"{path}: unreadable manifest ({err})") from None
    return parse_manifest(raw, data_dir=Path(data_dir), origin=str(path))


def parse_manifest(raw: Any, *, data_dir: Path, origin: str) -> Federation:
    """Build a :class:`Federation` from decoded JSON, naming ``origin`` in every error."""

    def fail(problem: str) -> HealthSyncError:
        return HealthSyncError(f"{origin}: {problem}")

    if not isinstance(raw, dict):
        raise fail("manifest must be a JSON object")
    if raw.get("format") != FORMAT:
        raise fail(f"unsupported format {raw.get('format')!r} (expected {FORMAT!r})")
    name = _require(raw, "name", str, fail)
    source = _require(raw, "source", str, fail)
    if source not in SOURCES:
        raise fail(f"source must be one of {', '.join(SOURCES)}, not {source!r}")
    created_with = raw.get("created_with", {})
    if not isinstance(created_with, dict):
        raise fail("created_with must be an object")

    outcomes = tuple(_require(raw, "outcomes", list, fail))
    if not outcomes or not all(isinstance(o, str) and o for o in outcomes):
        raise fail("outcomes must be a non-empty list of column names")
    default_target = _require(raw, "default_target", str, fail)
    if default_target not in outcomes:
        raise fail(f"default_target {default_target!r} is not one of the outcomes")

    incident = raw.get("incident", {})
    if not isinstance(incident, dict):
        raise fail("incident must be an object mapping an incident outcome to its baseline outcome")
    for outcome, baseline in incident.items():
        if outcome not in outcomes or baseline not in outcomes or baseline in incident:
            raise fail(
                f"incident: {outcome!r} -> {baseline!r} must map an outcome to another, "
                "non-incident outcome"
            )

    features = tuple(_parse_feature(item, fail) for item in _require(raw, "features", list, fail))
    columns = [spec.name for spec in features] + list(outcomes)
    duplicates = sorted(c for c, n in Counter(columns).items() if n > 1)
    if duplicates:
        raise fail(f"column names used twice: {', '.join(duplicates)}")
    if SPLIT_COLUMN in columns:
        raise fail(f"{SPLIT_COLUMN!r} is reserved for the train/test split")

    hospitals = tuple(
        _parse_hospital(item, fail) for item in _require(raw, "hospitals", list, fail)
    )
    if not hospitals:
        raise fail("a federation needs at least one hospital")
    repeated = sorted(i for i, n in Counter(info.id for info in hospitals).items() if n > 1)
    if repeated:
        raise fail(f"hospital ids used twice: {', '.join(repeated)}")

    return Federation(
        data_dir=data_dir,
        name=name,
        source=source,  # type: ignore[arg-type]
        outcomes=outcomes,
        default_target=default_target,
        features=features,
        hospitals=hospitals,
        created_with=dict(created_with),
        incident=dict(incident),
    )


def _require(raw: Mapping[str, Any], key: str, kind: type, fail: _Fail) -> Any:
    value = raw.get(key)
    if not isinstance(value, kind):
        raise fail(f"{key!r} is missing or not a {kind.__name__}")
    return value


def _parse_feature(item: Any, fail: _Fail) -> FeatureSpec:
    if not isinstance(item, dict):
        raise fail("each feature must be an object")
    name = _require(item, "name", str, fail)
    kind = item.get("kind")
    if kind not in FEATURE_KINDS:
        raise fail(f"feature {name!r}: kind must be numeric or categorical, not {kind!r}")
    unit = item.get("unit")
    if unit is not None and not isinstance(unit, str):
        raise fail(f"feature {name!r}: unit must be a string or null")
    categories = item.get("categories")
    if kind == "numeric":
        if categories is not None:
            raise fail(f"feature {name!r}: a numeric feature has no categories")
        return FeatureSpec(name, "numeric", None, unit)
    if not isinstance(categories, Sequence) or isinstance(categories, str) or not categories:
        raise fail(f"feature {name!r}: a categorical feature needs a list of categories")
    if not all(isinstance(c, str) for c in categories) or len(set(categories)) != len(categories):
        raise fail(f"feature {name!r}: categories must be distinct strings")
    return FeatureSpec(name, "categorical", tuple(categories), unit)


def _parse_hospital(item: Any, fail: _Fail) -> HospitalInfo:
    if not isinstance(item, dict):
        raise fail("each hospital must be an object")
    hospital_id = _require(item, "id", str, fail)
    if not HOSPITAL_ID_PATTERN.match(hospital_id):
        raise fail(f"hospital id {hospital_id!r} is not filesystem-safe")
    name = _require(item, "name", str, fail)
    counts = []
    for key in ("n_train", "n_test"):
        value = item.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise fail(f"hospital {hospital_id!r}: {key} must be a positive integer")
        counts.append(value)
    extras = {k: v for k, v in item.items() if k not in _HOSPITAL_FIELDS}
    return HospitalInfo(hospital_id, name, counts[0], counts[1], extras)
