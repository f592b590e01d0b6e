#!/usr/bin/env bash
# CUDA and (where installed) TensorRT latency benchmarks in one go, JSON into an output folder.
#
#   benchmarks/gpu.sh [OUT_DIR]        # default benchmarks/results/gpu; fits in a 10-minute run
#
# 1. records the device (nvidia-smi: name, driver, clocks, power limit; nvpmodel on a Jetson),
# 2. builds the TensorRT engines of the bundle on this device when TensorRT is installed
#    (engines are not portable across GPUs or TensorRT versions; each build is capped at 150 s),
# 3. runs `mlsan-edge bench` on the GPU backends (PyTorch CUDA teacher and student with CUDA-event
#    device time, TensorRT FP16 / INT8) beside the CPU references (onnxruntime INT8, PyTorch eager
#    teacher), plus the per-step micro-benchmarks; the real-time stream and the naive pipeline are
#    CPU measurements and are left to the CPU run (`mlsan-edge bench --json ...`).
#
# Environment: PYTHON (default python), BUNDLE (default "default"), RUNS (default 500), WARMUP (50).
set -uo pipefail

cd "$(dirname "$0")/.."
OUT="${1:-benchmarks/results/gpu}"
PY="${PYTHON:-python}"
BUNDLE="${BUNDLE:-default}"
RUNS="${RUNS:-500}"
WARMUP="${WARMUP:-50}"
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
t0=$(date +%s)

echo "== device"
{ nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,clocks.mem,power.limit,memory.total --format=csv \
  || echo "nvidia-smi: not available"; } | tee "$OUT/nvidia_smi.csv"
command -v nvpmodel >/dev/null && nvpmodel -q > "$OUT/nvpmodel.txt" 2>&1
"$PY" - > "$OUT/gpu_env.json" <<'PYEOF'
import json, importlib.util
d = {"torch_cuda": None, "tensorrt": None}
if importlib.util.find_spec("torch"):
    import torch
    d["torch"] = torch.__version__
    d["torch_cuda"] = torch.version.cuda if torch.cuda.is_available() else None
    d["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
if importlib.util.find_spec("tensorrt"):
    import tensorrt
    d["tensorrt"] = tensorrt.__version__
print(json.dumps(d, indent=2))
PYEOF
cat "$OUT/gpu_env.json"

BACKENDS="onnxruntime-int8,torch-teacher,torch-cuda-teacher,torch-cuda-student"
if "$PY" -c "import tensorrt" 2>/dev/null; then
  for p in fp16 int8; do
    echo "== TensorRT engines ($p)"
    if timeout 150 "$PY" -c "import sys; from mlsan_edge.cli import main; sys.exit(main(sys.argv[1:]))" build-engine --bundle "$BUNDLE" --precision "$p" > "$OUT/build_engine_$p.log" 2>&1; then
      BACKENDS="$BACKENDS,tensorrt-$p"
    else
      echo "engine build $p failed or timed out: see $OUT/build_engine_$p.log"
    fi
  done
else
  echo "== TensorRT not installed: CUDA (PyTorch) only"
fi

echo "== bench ($BACKENDS)"
timeout 400 "$PY" -m mlsan_edge.bench --bundle "$BUNDLE" --runs "$RUNS" --warmup "$WARMUP" --backends "$BACKENDS" \
  --skip naive,pipeline,e2e,hangover,cold --cache-sizes 10,1000 \
  --json "$OUT/bench_gpu.json" --out-dir "$OUT" --no-progress > "$OUT/bench_gpu.log" 2>&1
rc=$?
tail -n 60 "$OUT/bench_gpu.log"
echo "== done in $(( $(date +%s) - t0 )) s (bench exit $rc); results in $OUT"
exit $rc
