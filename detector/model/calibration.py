"""Calibrators: raw logits -> probabilities, fitted on held-out labelled data, stored as plain numbers.

Fitting uses scikit-learn (``LogisticRegression``, ``IsotonicRegression``); applying uses numpy only, from
the numbers a checkpoint stores, so scoring never needs scikit-learn objects or pickles. Every calibrator
is monotone non-decreasing in the logit and maps into [0, 1].

    none         p = sigmoid(z)
    temperature  p = sigmoid(z / T)                 one parameter, keeps the ranking and the 0.5 point
    platt        p = sigmoid(a * z + b)
    isotonic     p = (1 - e) * cir(sigmoid(z)) + e * sigmoid(z), e = 1e-6

``cir`` is centred isotonic regression: scikit-learn's isotonic fit is a step function whose flat blocks
tie every window inside them, which throws away the model's ranking (and with it AUPRC); drawing the map
piecewise-linearly through the centre of each block keeps it increasing between blocks, and the 1e-6 share
of the raw probability breaks the remaining ties (inside the first and last blocks) without moving any
probability by more than 1e-6.
"""

from __future__ import annotations

from typing import Any

import numpy as np

METHODS = ("platt", "isotonic", "temperature")
ISOTONIC_TIE_BREAK = 1e-6  # share of the raw probability in an isotonic map: the ranking survives calibration


def sigmoid(z: np.ndarray) -> np.ndarray:
    """Numerically stable logistic function, float64."""
    z = np.asarray(z, dtype=np.float64)
    out = np.empty_like(z)
    pos = z >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-z[pos]))
    ez = np.exp(z[~pos])
    out[~pos] = ez / (1.0 + ez)
    return out


def fit(method: str, logits: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    """Fit ``method`` on held-out (logit, 0/1 label) pairs; return its plain-number parameters.

    Temperature is the positive T minimising the log-loss (bounded to [e^-7, e^7]); platt and isotonic
    come from scikit-learn.
    """
    from sklearn.isotonic import IsotonicRegression
    from sklearn.linear_model import LogisticRegression

    z = np.asarray(logits, dtype=np.float64).reshape(-1)
    y = np.asarray(labels).reshape(-1).astype(int)
    if len(z) != len(y) or len(z) == 0:
        raise ValueError("calibration needs as many labels as scores, and at least one")
    if y.min() == y.max():
        raise ValueError("calibration needs both positive and negative examples in the data")
    if method == "temperature":
        from scipy.optimize import minimize_scalar

        def nll(log_t: float) -> float:  # mean negative log-likelihood of sigmoid(z / T)
            u = z / np.exp(log_t)
            return float(np.mean(np.logaddexp(0.0, u) - y * u))

        best = minimize_scalar(nll, bounds=(-7.0, 7.0), method="bounded")
        return {"method": "temperature", "temperature": float(np.exp(best.x))}
    if method == "platt":
        lr = LogisticRegression(C=1e6, max_iter=1000).fit(z[:, None], y)
        a = float(lr.coef_[0, 0])
        if a <= 0:
            raise ValueError("platt scaling found no positive slope: the scores do not rank the labels")
        return {"method": "platt", "a": a, "b": float(lr.intercept_[0])}
    if method == "isotonic":
        iso = IsotonicRegression(y_min=0.0, y_max=1.0, increasing=True, out_of_bounds="clip")
        s = sigmoid(z)
        values, block = np.unique(iso.fit(s, y).predict(s), return_inverse=True)
        centres = np.bincount(block, weights=s) / np.bincount(block)  # increasing, as the blocks are
        return {"method": "isotonic", "x": [float(v) for v in centres], "y": [float(v) for v in values]}
    raise ValueError(f"unknown calibration method {method!r}; choose one of {', '.join(METHODS)}")


def apply(params: dict[str, Any], logits: np.ndarray) -> np.ndarray:
    """Map logits to calibrated probabilities in [0, 1] with stored parameters (float64 out)."""
    method = params.get("method", "none")
    z = np.asarray(logits, dtype=np.float64)
    if method == "none":
        p = sigmoid(z)
    elif method == "temperature":
        p = sigmoid(z / float(params["temperature"]))
    elif method == "platt":
        p = sigmoid(float(params["a"]) * z + float(params["b"]))
    elif method == "isotonic":
        s = sigmoid(z)
        p = (1.0 - ISOTONIC_TIE_BREAK) * np.interp(s, np.asarray(params["x"]), np.asarray(params["y"]))
        p += ISOTONIC_TIE_BREAK * s
    else:
        raise ValueError(f"unknown calibration method {method!r}")
    return np.clip(p, 0.0, 1.0)


def validate(params: dict[str, Any]) -> None:
    """Raise ValueError unless ``params`` is a complete, monotone calibrator."""
    method = params.get("method")
    if method == "none":
        return
    numbers = [v for k, v in params.items() if k != "method"]
    if not all(np.all(np.isfinite(np.asarray(v, dtype=float))) for v in numbers):
        raise ValueError(f"{method} calibrator holds non-finite numbers")
    if method == "temperature":
        if not float(params["temperature"]) > 0:
            raise ValueError("temperature must be > 0")
    elif method == "platt":
        if not float(params["a"]) > 0:
            raise ValueError("platt slope must be > 0")
        float(params["b"])
    elif method == "isotonic":
        x, y = np.asarray(params["x"], dtype=float), np.asarray(params["y"], dtype=float)
        if len(x) == 0 or x.shape != y.shape or np.any(np.diff(x) < 0) or np.any(np.diff(y) < 0):
            raise ValueError("isotonic map must be non-empty and non-decreasing")
    else:
        raise ValueError(f"unknown calibration method {method!r}")
