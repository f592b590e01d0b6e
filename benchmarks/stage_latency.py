"""Latency of the fusion stages (1-3) on every backend present, same inputs: `mlsan-edge bench`'s
`fusion` part alone (onnxruntime FP32 and INT8 student, PyTorch eager teacher and student, and
TensorRT / CUDA where present).

    python benchmarks/stage_latency.py --json benchmarks/results/stage_latency.json [--runs 2000]

Every option of `mlsan-edge bench` applies; this only narrows it to the `fusion` part.
"""

import sys

from mlsan_edge.bench.cli import main
from mlsan_edge.bench.run import PARTS

if __name__ == "__main__":
    sys.exit(main(["--skip", ",".join(p for p in PARTS if p != "fusion"), *sys.argv[1:]]))
