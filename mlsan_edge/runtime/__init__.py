"""The on-device runtime (no torch): `load_runtime(bundle, backend) -> Runtime`.

Submodules load lazily, so `import mlsan_edge.runtime` stays cheap.
"""

__all__ = ["load_runtime", "Runtime", "RuntimeConfig", "Event", "Session", "Step"]


def __getattr__(name):
    if name == "load_runtime":
        from mlsan_edge.runtime.load import load_runtime

        return load_runtime
    if name in ("Runtime", "Session"):
        from mlsan_edge.runtime import session

        return getattr(session, name)
    if name == "RuntimeConfig":
        from mlsan_edge.runtime.config import RuntimeConfig

        return RuntimeConfig
    if name == "Step":
        from mlsan_edge.runtime.step import Step

        return Step
    if name == "Event":
        from mlsan_edge.runtime.events import Event

        return Event
    raise AttributeError(f"module 'mlsan_edge.runtime' has no attribute {name!r}")
