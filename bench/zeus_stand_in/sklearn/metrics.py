"""Stand-in for sklearn.metrics.auc (trapezoidal area), so Zeus's monitor package imports without scikit-learn."""

import numpy as np


def auc(x, y):
    return float(np.trapezoid(y, x))
