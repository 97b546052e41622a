"""Checks shared by the public metric functions (scikit-learn style: quote the bad value)."""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray


def check_1d(values: ArrayLike, name: str, *, dtype: type = np.float64) -> NDArray:
    """Return ``values`` as a 1-D array of ``dtype``; raise ``ValueError`` naming ``name``."""
    arr: NDArray = np.asarray(values, dtype=dtype)
    if arr.ndim == 0:
        arr = arr.reshape(1)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}. Flatten it with .ravel().")
    return arr


def check_finite(arr: NDArray, name: str) -> None:
    """Raise ``ValueError`` when ``arr`` holds NaN or infinity, saying where the first one is."""
    bad = ~np.isfinite(arr)
    if bad.any():
        first = int(np.flatnonzero(bad.ravel())[0])
        raise ValueError(
            f"{name} holds {int(bad.sum())} non-finite value(s) (first at index {first}); "
            "drop or fill them before evaluating."
        )


def check_points(values: ArrayLike, name: str, n_dims: int) -> NDArray[np.float64]:
    """Return ``values`` as a finite ``(N, n_dims)`` float64 array; empty gives (0, n_dims)."""
    arr = np.asarray(values, dtype=np.float64)
    if arr.size == 0:
        return arr.reshape(0, n_dims)
    if arr.ndim != 2 or arr.shape[1] != n_dims:
        raise ValueError(f"{name} must have shape (N, {n_dims}), got {arr.shape}.")
    check_finite(arr, name)
    return arr


def check_same_length(**arrays: NDArray) -> None:
    """Raise ``ValueError`` unless every array has the same first dimension."""
    lengths = {name: len(arr) for name, arr in arrays.items()}
    if len(set(lengths.values())) > 1:
        listed = ", ".join(f"{name}={n}" for name, n in lengths.items())
        raise ValueError(f"inputs must have the same length, got {listed}.")


def check_fp_rates(fp_rates: ArrayLike) -> NDArray[np.float64]:
    """Return the operating points as a sorted positive 1-D array."""
    rates = check_1d(fp_rates, "fp_rates")
    if rates.size == 0 or not np.all(np.isfinite(rates)) or np.any(rates <= 0):
        raise ValueError(f"fp_rates must be positive finite numbers, got {list(rates)}.")
    return rates


def check_confidence(confidence: float) -> None:
    """Raise ``ValueError`` unless ``0 < confidence < 1``."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie strictly between 0 and 1, got {confidence}.")


def as_ids(values: ArrayLike, name: str) -> NDArray[np.str_]:
    """Return identifiers (series UIDs, image ids) as a 1-D array of strings."""
    arr = np.asarray(values)
    if arr.ndim == 0:
        arr = arr.reshape(1)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}.")
    return arr.astype(str)
