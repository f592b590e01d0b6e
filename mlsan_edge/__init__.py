"""mlsan_edge: speaker-adaptive multimodal emotion recognition for edge devices (ML-SAN).

`import mlsan_edge` never imports torch. Training lives in `mlsan_edge.train`, the device
runtime in `mlsan_edge.runtime`.
"""

__version__ = "0.1.0"


def __getattr__(name):
    # lazily, so `import mlsan_edge` loads nothing heavy
    if name == "load_runtime":
        from mlsan_edge.runtime.load import load_runtime

        return load_runtime
    raise AttributeError(f"module 'mlsan_edge' has no attribute {name!r}")
