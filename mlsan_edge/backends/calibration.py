"""Calibration sets: folders of `.npz` files, one array per model input (first axis = samples).

Read by INT8 quantisation (`mlsan_edge.export.quantize`, onnxruntime's `CalibrationDataReader`
protocol: `get_next`/`rewind`) and by TensorRT engine verification (`tensorrt_verify`), so it
lives here, below both: the backends layer never imports export/. numpy only.
See calibration_data/README.md for the files this repository ships.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import numpy as np

log = logging.getLogger(__name__)


class CalibrationError(ValueError):
    """The calibration folder is empty or does not match the model's inputs."""


def _shape_ok(got: Sequence[int], want: Sequence) -> bool:
    """Trailing shape check; `want` entries that are None, -1 or str match anything."""
    if len(got) != len(want):
        return False
    return all(w is None or isinstance(w, str) or w < 0 or g == w for g, w in zip(got, want))


class ArrayCalibrationReader:
    """Feeds calibration samples one batch at a time (a `CalibrationDataReader`).

    Args:
        samples: list of {input name: array with first axis = samples}; one dict per source file.
        batch_size: samples per `get_next` call (1 suits models with a static batch of 1).
    """

    def __init__(self, samples: Sequence[Mapping[str, np.ndarray]], batch_size: int = 1):
        self.samples = [dict(s) for s in samples]
        self.batch_size = int(batch_size)
        self._it: Iterator[dict[str, np.ndarray]] | None = None

    @property
    def n_samples(self) -> int:
        return sum(len(next(iter(s.values()))) for s in self.samples)

    def __len__(self) -> int:  # number of batches `get_next` yields
        return sum(-(-len(next(iter(s.values()))) // self.batch_size) for s in self.samples)

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return self.batches()

    def batches(self) -> Iterator[dict[str, np.ndarray]]:
        for group in self.samples:
            n = len(next(iter(group.values())))
            for i in range(0, n, self.batch_size):
                yield {k: v[i : i + self.batch_size] for k, v in group.items()}

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._it is None:
            self._it = self.batches()
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = None


def calibration_reader_from_dir(
    directory: str | os.PathLike,
    input_names: Sequence[str],
    *,
    shapes: Mapping[str, Sequence] | None = None,
    dtypes: Mapping[str, str] | None = None,
    batch_size: int = 1,
) -> ArrayCalibrationReader:
    """Load `directory/*.npz` (sorted by name, so calibration is deterministic), or one .npz file.

    Args:
        directory: folder of .npz files, or one .npz file; each holds one array per name in
            `input_names`, shape (N, *feature_shape), all with the same N (other arrays are ignored).
        input_names: the model's input names.
        shapes: optional expected per-sample shape of each input, *without* the batch axis;
            None/-1/str entries are dynamic.
        dtypes: optional numpy dtype per input; float arrays are cast to it, others must match.
        batch_size: samples per calibration step.

    Raises:
        CalibrationError: empty/missing folder, missing input name, mismatched N or wrong shape;
            the message names the file.
    """
    root = Path(directory)
    files = [root] if root.is_file() and root.suffix == ".npz" else sorted(root.glob("*.npz")) if root.is_dir() else []
    if not files:
        raise CalibrationError(
            f"no calibration data: {root} {'has no *.npz files' if root.is_dir() else 'does not exist'}; "
            "expected .npz files with one array per model input (see calibration_data/README.md for "
            "the command that rebuilds them)"
        )
    groups = []
    for f in files:
        with np.load(f, allow_pickle=False) as z:
            missing = [n for n in input_names if n not in z.files]
            if missing:
                raise CalibrationError(f"{f.name}: missing input(s) {missing}; it holds {z.files}, the model needs {list(input_names)}")
            group = {n: z[n] for n in input_names}
        counts = {n: (a.shape[0] if a.ndim else None) for n, a in group.items()}
        if len(set(counts.values())) != 1 or None in counts.values():
            raise CalibrationError(f"{f.name}: inputs disagree on the number of samples (first axis): {counts}")
        for n, a in group.items():
            if shapes is not None and n in shapes and not _shape_ok(a.shape[1:], shapes[n]):
                want = tuple("?" if (w is None or isinstance(w, str) or w < 0) else w for w in shapes[n])
                raise CalibrationError(
                    f"{f.name}: input {n!r} has per-sample shape {a.shape[1:]}, the model expects {want}; "
                    "the calibration set was built for another feature contract: rebuild it"
                )
            if dtypes is not None and n in dtypes and a.dtype != np.dtype(dtypes[n]):
                if np.issubdtype(a.dtype, np.floating) and np.issubdtype(np.dtype(dtypes[n]), np.floating):
                    group[n] = a.astype(dtypes[n])
                else:
                    raise CalibrationError(f"{f.name}: input {n!r} is {a.dtype}, the model expects {dtypes[n]}")
        groups.append(group)
    reader = ArrayCalibrationReader(groups, batch_size)
    log.info("calibration: %d samples from %d files in %s", reader.n_samples, len(files), root)
    return reader


__all__ = ["ArrayCalibrationReader", "CalibrationError", "calibration_reader_from_dir"]
