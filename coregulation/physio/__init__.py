"""Physiology front end on neurokit2: raw ECG, EDA and respiration to model-ready series.

Extra ``physio`` (``pip install 'coregulation[physio]'``).  See
:func:`dyad_dataset` for both persons on one clock, and ``ecg_epochs``,
``eda_epochs``, ``rsp_epochs`` for one person's epoch features with their quality
flags.  Bad epochs are NaN, never filled in.
"""

from coregulation.physio._frontend import (
    FEATURES,
    dyad_dataset,
    ecg_epochs,
    eda_epochs,
    r_peaks,
    rsa_porges_bohrer,
    rsp_epochs,
)

__all__ = [
    "FEATURES",
    "dyad_dataset",
    "ecg_epochs",
    "eda_epochs",
    "r_peaks",
    "rsa_porges_bohrer",
    "rsp_epochs",
]
