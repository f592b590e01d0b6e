"""The one interface every inference backend answers: named numpy arrays in, named arrays out.

A backend is created by `mlsan_edge.backends.create_backend(bundle, role, ...)`; callers never
check which one they got. Inputs are validated against the model's specs before they reach the
library, so a wrong name, dtype, rank or size fails with a readable message instead of a
TensorRT/onnxruntime error deep in C++.
"""

from __future__ import annotations

import abc
import logging
from typing import Mapping, Sequence

import numpy as np

from mlsan_edge.bundle import TensorSpec

log = logging.getLogger(__name__)


class InputError(ValueError):
    """Feeds that do not match a model's input specs."""


def is_dynamic(dim) -> bool:
    """True for a dynamic axis: -1, None or a symbolic name."""
    return dim is None or isinstance(dim, str) or (isinstance(dim, int) and dim < 0)


def format_shape(shape: Sequence) -> str:
    return "(" + ", ".join("?" if d is None else str(d) for d in shape) + ")"


def validate_feeds(feeds: Mapping[str, np.ndarray], specs: Sequence[TensorSpec], model: str = "model") -> None:
    """Check `feeds` against input `specs`: names, dtype, rank, static sizes, shared symbolic dims.

    Raises:
        InputError: naming the input, what was given and what the model expects.
    """
    expected = {s.name: s for s in specs}
    missing = [n for n in expected if n not in feeds]
    unknown = [n for n in feeds if n not in expected]
    if missing or unknown:
        raise InputError(
            f"{model}: inputs do not match: missing {missing}, unexpected {unknown}; "
            f"expected exactly {list(expected)}"
        )
    symbols: dict[str, tuple[int, str]] = {}  # symbolic dim name -> (size, first input seen)
    for name, spec in expected.items():
        arr = feeds[name]
        if not isinstance(arr, np.ndarray):
            raise InputError(f"{model}: input {name!r} must be a numpy array, got {type(arr).__name__}")
        if arr.dtype != np.dtype(spec.dtype):
            raise InputError(
                f"{model}: input {name!r} has dtype {arr.dtype}, expected {spec.dtype} "
                f"(convert with .astype(np.{spec.dtype}))"
            )
        if arr.ndim != len(spec.shape):
            raise InputError(
                f"{model}: input {name!r} has shape {arr.shape} (rank {arr.ndim}), expected rank "
                f"{len(spec.shape)}: {format_shape(spec.shape)}"
            )
        for axis, (got, want) in enumerate(zip(arr.shape, spec.shape)):
            if isinstance(want, str):
                seen = symbols.setdefault(want, (got, name))
                if seen[0] != got:
                    raise InputError(
                        f"{model}: dimension {want!r} is {seen[0]} in input {seen[1]!r} but {got} in "
                        f"input {name!r} (axis {axis}); they must agree"
                    )
            elif not is_dynamic(want) and got != want:
                raise InputError(
                    f"{model}: input {name!r} has shape {arr.shape}, expected {format_shape(spec.shape)}: "
                    f"axis {axis} must be {want}, got {got}"
                )


class Backend(abc.ABC):
    """Runs one model. Subclasses set `inputs`, `outputs`, `name`, `precision`, `device`.

    Attributes:
        inputs / outputs: tensor specs in graph order (dynamic dims as -1 or a symbolic name).
        name: "onnxruntime", "tensorrt", ...
        precision: "fp32", "fp16" or "int8".
        device: where it runs, in words ("cpu", "cuda:0 NVIDIA Orin").
    """

    inputs: tuple[TensorSpec, ...] = ()
    outputs: tuple[TensorSpec, ...] = ()
    name: str = "backend"
    precision: str = "fp32"
    device: str = "cpu"

    @property
    def input_names(self) -> list[str]:
        return [s.name for s in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [s.name for s in self.outputs]

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Validate `feeds` and run the model.

        Args:
            feeds: input name -> array with the spec's dtype and shape.

        Returns:
            Output name -> array (host memory, owned by the caller).
        """
        validate_feeds(feeds, self.inputs, model=f"{self.name} {self.precision}")
        return self._run(feeds)

    @abc.abstractmethod
    def _run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run validated feeds."""

    def close(self) -> None:
        """Release sessions, engines and device memory. Safe to call twice."""

    def __enter__(self) -> "Backend":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(precision={self.precision!r}, device={self.device!r}, inputs={self.input_names})"


__all__ = ["Backend", "InputError", "TensorSpec", "validate_feeds", "is_dynamic", "format_shape"]
