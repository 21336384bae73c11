"""Hospital data: the federation manifest, per-hospital access, generation and import.

Each hospital's patient rows live only in ``hospitals/<id>/patients.parquet``
and are read only through :func:`open_hospital`; everything else works from
the manifest returned by :func:`load_federation`.
"""

from healthsync.data.accessor import HospitalAccessor, open_hospital
from healthsync.data.manifest import FeatureSpec, Federation, HospitalInfo, load_federation

__all__ = [
    "FeatureSpec",
    "Federation",
    "HospitalAccessor",
    "HospitalInfo",
    "load_federation",
    "open_hospital",
]
