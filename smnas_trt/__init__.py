"""smnas-trt: SM-NAS architecture search for object detectors, with real-engine latency."""

import os

# Sleep instead of spin-waiting in OpenMP barriers: on a shared or small CPU a spinning torch thread pool
# runs many times slower as soon as another process wants a core. Takes effect if set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
