"""Online detectors behind one interface (detectors.base); importing the package registers them all."""

from detectors import (  # noqa: F401 - registration
    autoencoder,
    cva,
    dynamic_pca,
    ewma_cusum,
    fusion,
    golden,
    hst,
    iforest,
    lagged_autoencoder,
    moving_average,
    news2,
    pca,
    sensor_health,
    transformer,
    twin_residual,
    vitals_residual,
    window_variance,
    zscore,
)
from detectors.base import REGISTRY, make_detector  # noqa: E402

__all__ = ["REGISTRY", "make_detector"]
