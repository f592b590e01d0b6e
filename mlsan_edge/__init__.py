"""mlsan_edge: speaker-adaptive multimodal emotion recognition for edge devices (ML-SAN).

`import mlsan_edge` never imports torch. Training lives in `mlsan_edge.train`, the device
runtime in `mlsan_edge.runtime`.
"""

__version__ = "0.1.0"
