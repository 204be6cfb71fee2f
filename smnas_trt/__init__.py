"""smnas-trt: SM-NAS architecture search for object detectors, with real-engine latency."""

__version__ = "0.1.0"
