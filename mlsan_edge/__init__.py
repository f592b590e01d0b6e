"""mlsan_edge: speaker-adaptive multimodal emotion recognition for edge devices (ML-SAN).

`import mlsan_edge` never imports torch. The device's entry point is
`mlsan_edge.runtime.load_runtime`; training lives in `mlsan_edge.train`, export in
`mlsan_edge.export` (the repository's top-level `export/` folder).
"""

__version__ = "0.1.0"
