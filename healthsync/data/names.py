"""Plausible, reproducible hospital names for synthetic federations.

Names make dashboards readable ("Ashford Community Clinic" rather than
``h0042``); they are drawn from the federation's seed so the same command
always names the same hospitals, and made unique so no two sites look alike.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

_PREFIXES = (
    "Ash", "Bel", "Bram", "Brook", "Cedar", "Clay", "Crest", "Dun", "East", "Elm",
    "Fair", "Fern", "Glen", "Gold", "Green", "Hart", "Haw", "Hazel", "High", "Holly",
    "Iron", "Kings", "Lake", "Lin", "Long", "Maple", "Mar", "Mill", "Nor", "North",
    "Oak", "Ox", "Pem", "Pine", "Queens", "Red", "River", "Rose", "South", "Spring",
    "Stone", "Sun", "Thorn", "West", "White", "Wil", "Win", "Wood", "York", "Ald",
)  # fmt: skip
_SUFFIXES = (
    "bridge", "brook", "bury", "combe", "dale", "field", "ford", "ham", "haven", "ley",
    "mere", "mouth", "port", "ridge", "stead", "ton", "vale", "wick", "wood", "worth",
)  # fmt: skip
_KIND_WORDS = {
    "teaching centre": ("University Hospital", "Medical Centre", "Teaching Hospital"),
    "general hospital": ("General Hospital", "District Hospital", "Memorial Hospital"),
    "community clinic": ("Community Clinic", "Health Centre", "Family Practice", "Clinic"),
}
_CAMPUSES = ("North", "South", "East", "West", "Central", "Riverside", "Hillside", "Park")


def hospital_names(rng: np.random.Generator, kinds: Sequence[str]) -> list[str]:
    """One distinct name per hospital, matching its kind (see ``_KIND_WORDS``)."""
    n = len(kinds)
    prefixes = rng.integers(len(_PREFIXES), size=n)
    suffixes = rng.integers(len(_SUFFIXES), size=n)
    words = rng.integers(1 << 30, size=n)
    names: list[str] = []
    taken: set[str] = set()
    for i, kind in enumerate(kinds):
        options = _KIND_WORDS[kind]
        place = _PREFIXES[prefixes[i]] + _SUFFIXES[suffixes[i]]
        base = f"{place} {options[words[i] % len(options)]}"
        name = _first_free(base, taken)
        taken.add(name)
        names.append(name)
    return names


def _first_free(base: str, taken: set[str]) -> str:
    if base not in taken:
        return base
    for campus in _CAMPUSES:
        candidate = f"{base}, {campus} Campus"
        if candidate not in taken:
            return candidate
    number = 2
    while f"{base} {number}" in taken:
        number += 1
    return f"{base} {number}"
