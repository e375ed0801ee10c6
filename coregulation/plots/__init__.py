"""Figures: of a fit (coupling forest, cross-lag curves, flow field, predictive
cross-correlation) and of a simulation study (a metric per cell, power curves).

Each function returns a matplotlib Figure; nothing is shown or saved unless you do
it (``fig.savefig(...)``, or :func:`save_figure`, which writes atomically).
"""

from coregulation.plots._figures import (
    coupling_forest,
    cross_lag_curves,
    flow_field,
    power_curve_plot,
    predictive_ccf,
    save_all,
    save_figure,
    study_metric_plot,
)

__all__ = ["coupling_forest", "cross_lag_curves", "flow_field", "power_curve_plot",
           "predictive_ccf", "save_all", "save_figure", "study_metric_plot"]
