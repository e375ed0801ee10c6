"""What the field measures today, as baselines for the models (METHODS.md §1.5).

* :func:`cross_correlation` and :func:`lead_lag`: the lagged cross-correlation split
  into therapist-led (positive lags: the client follows) and client-led lags;
* :func:`windowed_cross_correlation` with :func:`pick_peaks` (Boker, Rotondo, Xu &
  King 2002);
* :func:`susy`: surrogate synchrony by segment shuffling (Tschacher & Meier 2020);
* :func:`pseudo_dyads`: the therapist of one dyad with the client of another.

These indices are functionals of all the dynamics (time constants, shared drives),
not coupling parameters: compare them with a model's implied cross-correlation,
never read them as directed coupling.
"""

from coregulation.synchrony._indices import (
    SusyResult,
    WindowedCrossCorrelation,
    cross_correlation,
    lead_lag,
    pick_peaks,
    pseudo_dyads,
    susy,
    windowed_cross_correlation,
)

__all__ = [
    "SusyResult",
    "WindowedCrossCorrelation",
    "cross_correlation",
    "lead_lag",
    "pick_peaks",
    "pseudo_dyads",
    "susy",
    "windowed_cross_correlation",
]
