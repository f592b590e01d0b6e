"""Inference backends behind one interface: named numpy arrays in, named arrays out.

    from mlsan_edge.backends import create_backend
    with create_backend("default", "student") as model:
        probs = model.run({"audio": a, "text": t})["probs"]

`create_backend` picks TensorRT or onnxruntime and the precision (rule in `select.py`).
TensorRT and the CUDA bindings are imported only when a TensorRT backend is created.
"""

from mlsan_edge.backends.base import Backend, InputError, TensorSpec, validate_feeds
from mlsan_edge.backends.select import BACKENDS, PRECISIONS, BackendPlan, create_backend, plan_backend

__all__ = [
    "Backend",
    "BackendPlan",
    "InputError",
    "TensorSpec",
    "validate_feeds",
    "create_backend",
    "plan_backend",
    "BACKENDS",
    "PRECISIONS",
]
