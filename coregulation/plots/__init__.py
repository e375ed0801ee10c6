"""Figures of a fit: coupling forest, cross-lag curves, flow field, predictive cross-correlation.

Each function takes a :class:`coregulation.Fit` and returns a matplotlib Figure;
nothing is shown or saved unless you do it (``fig.savefig(...)``).
"""

from coregulation.plots._figures import (
    coupling_forest,
    cross_lag_curves,
    flow_field,
    predictive_ccf,
    save_all,
)

__all__ = ["coupling_forest", "cross_lag_curves", "flow_field", "predictive_ccf", "save_all"]
