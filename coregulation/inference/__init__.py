"""Inference: the Kalman engine, likelihoods of models on data, and point fits."""

from coregulation.inference.kalman import (
    LGSSM,
    FilterResult,
    SmootherResult,
    kalman_filter,
    kalman_smoother,
    log_likelihood,
)

__all__ = [
    "LGSSM",
    "FilterResult",
    "SmootherResult",
    "kalman_filter",
    "kalman_smoother",
    "log_likelihood",
]
