"""Physiology front end on neurokit2: raw ECG, EDA and respiration to model-ready series.

Extra ``physio`` (``pip install 'coregulation[physio]'``).  See
:func:`dyad_dataset` for both persons on one clock (:func:`read_dyad_csv` from CSV
files), and ``ecg_epochs``,
``eda_epochs``, ``rsp_epochs`` for one person's epoch features with their quality
flags.  Bad epochs are NaN, never filled in.
"""

from coregulation.physio._frontend import (
    FEATURES,
    breath_phases,
    dyad_dataset,
    ecg_epochs,
    eda_epochs,
    hf_hrv,
    r_peaks,
    read_dyad_csv,
    rsa_peak_to_trough,
    rsa_porges_bohrer,
    rsp_epochs,
)

__all__ = [
    "FEATURES",
    "breath_phases",
    "dyad_dataset",
    "ecg_epochs",
    "eda_epochs",
    "hf_hrv",
    "r_peaks",
    "read_dyad_csv",
    "rsa_peak_to_trough",
    "rsa_porges_bohrer",
    "rsp_epochs",
]
