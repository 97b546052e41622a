"""Seeded virtual patient cohorts written in the real formats (issue 3).

The phantom is activecad's stand-in for LUNA16/LIDC, DeepLesion and chest-radiograph
data: chest CTs with a branching vessel tree, nodules of every kind read by four
simulated LIDC readers, liver tumours and lymph nodes over follow-up studies, and
radiographs projected from the same CTs.
"""

from activecad.phantom.cohort import (
    PHANTOM_REVISION,
    PatientCase,
    StudyCase,
    consensus,
    generate_cohort,
    generate_patient,
    generate_scan,
)
from activecad.phantom.config import PRESETS, Preset

__all__ = [
    "PHANTOM_REVISION",
    "PRESETS",
    "PatientCase",
    "Preset",
    "StudyCase",
    "consensus",
    "generate_cohort",
    "generate_patient",
    "generate_scan",
]
