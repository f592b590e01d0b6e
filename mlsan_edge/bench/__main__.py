"""`python -m mlsan_edge.bench` = `mlsan-edge bench`."""

import sys

from mlsan_edge.bench.cli import main

sys.exit(main())
