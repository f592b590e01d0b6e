"""Processing after the end of each utterance through the whole runtime: `mlsan-edge bench`'s
end-to-end part alone (a real-time-paced stream of RAVDESS clips; `total_after_end` and the wait
from the true end of speech).

    python benchmarks/runtime_latency.py --json benchmarks/results/runtime_latency.json [--quick]

Every option of `mlsan-edge bench` applies; this only narrows it to the `e2e` part.
"""

import sys

from mlsan_edge.bench.cli import main
from mlsan_edge.bench.run import PARTS

if __name__ == "__main__":
    sys.exit(main(["--skip", ",".join(p for p in PARTS if p != "e2e"), *sys.argv[1:]]))
