"""Independent numpy references: the dense joint Gaussian and a textbook Kalman filter."""

import numpy as np
from scipy.stats import multivariate_normal


def ssm_arrays(ssm):
    """Per-step numpy matrices from an LGSSM."""
    idx = np.asarray(ssm.step_index)
    return dict(
        Phi=np.asarray(ssm.transition)[idx], Q=np.asarray(ssm.process_cov)[idx],
        c=np.asarray(ssm.state_offset), H=np.asarray(ssm.emission),
        d=np.asarray(ssm.emission_offset), R=np.asarray(ssm.emission_cov),
        m0=np.asarray(ssm.initial_mean), P0=np.asarray(ssm.initial_cov),
    )


def dense_joint(ssm):
    """Mean and covariance of the stacked states s_1..s_T and observations y_1..y_T."""
    a = ssm_arrays(ssm)
    T, n = a["c"].shape
    p = a["H"].shape[0]
    means, covs = [], []
    m, P = a["m0"], a["P0"]
    for k in range(T):
        m = a["Phi"][k] @ m + a["c"][k]
        P = a["Phi"][k] @ P @ a["Phi"][k].T + a["Q"][k]
        means.append(m)
        covs.append(P)
    state_cov = np.zeros((T * n, T * n))
    for j in range(T):
        block = covs[j]
        for k in range(j, T):
            if k > j:
                block = a["Phi"][k] @ block
            state_cov[k * n:(k + 1) * n, j * n:(j + 1) * n] = block
            state_cov[j * n:(j + 1) * n, k * n:(k + 1) * n] = block.T
    Hb = np.kron(np.eye(T), a["H"])
    y_mean = Hb @ np.concatenate(means) + np.tile(a["d"], T)
    y_cov = Hb @ state_cov @ Hb.T + np.kron(np.eye(T), a["R"])
    cross = state_cov @ Hb.T  # Cov(states, y)
    return np.concatenate(means), state_cov, y_mean, y_cov, cross, (T, n, p)


def dense_log_likelihood(ssm, y):
    _, _, y_mean, y_cov, _, _ = dense_joint(ssm)
    flat = np.asarray(y).reshape(-1)
    o = ~np.isnan(flat)
    return multivariate_normal(y_mean[o], y_cov[np.ix_(o, o)]).logpdf(flat[o])


def dense_smoother(ssm, y):
    """E[s_k | y] and Cov[s_k | y] by conditioning the joint Gaussian."""
    s_mean, s_cov, y_mean, y_cov, cross, (T, n, _) = dense_joint(ssm)
    flat = np.asarray(y).reshape(-1)
    o = ~np.isnan(flat)
    gain = np.linalg.solve(y_cov[np.ix_(o, o)], cross[:, o].T).T
    mean = s_mean + gain @ (flat[o] - y_mean[o])
    cov = s_cov - gain @ cross[:, o].T
    return mean.reshape(T, n), np.stack([cov[k * n:(k + 1) * n, k * n:(k + 1) * n] for k in range(T)])


def textbook_filter(ssm, y):
    """Covariance-form Kalman filter that drops missing rows (no mask trick)."""
    a = ssm_arrays(ssm)
    m, P = a["m0"], a["P0"]
    total = 0.0
    means = []
    for k in range(y.shape[0]):
        m = a["Phi"][k] @ m + a["c"][k]
        P = a["Phi"][k] @ P @ a["Phi"][k].T + a["Q"][k]
        o = ~np.isnan(y[k])
        if o.any():
            H, R = a["H"][o], a["R"][np.ix_(o, o)]
            v = y[k, o] - H @ m - a["d"][o]
            S = H @ P @ H.T + R
            K = P @ H.T @ np.linalg.inv(S)
            total += multivariate_normal(np.zeros(o.sum()), S).logpdf(v)
            m = m + K @ v
            P = P - K @ S @ K.T
        means.append(m)
    return total, np.array(means)
