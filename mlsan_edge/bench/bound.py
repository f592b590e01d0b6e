"""The bound: FLOPs and bytes per utterance of each graph, the floor they imply, and the gap.

Counted from the ONNX files with the `onnx` package: multiply-accumulates of MatMul, Gemm, Conv,
MatMulInteger and LSTM nodes (shapes from ONNX shape inference at the utterance's size;
elementwise ops, norms and softmax are left out, as in `mlsan_edge.model.stages.stage_macs`),
and bytes moved = the weights read once plus the graph's inputs and outputs (activations of
these batch-1 graphs are small and stay in cache). FLOPs = 2 x MACs.

A step's floor on a machine is max(FLOPs / peak FLOP/s, bytes / bandwidth); the larger term is
the one that dominates ("compute" or "memory"). Measured / floor says how far a step is from it
(on CPU-sized graphs of ~0.1 MFLOP the rest is call overhead).

Machines: the Orin Nano 8 GB (Super) at 67 sparse INT8 TOPS (about half dense, so 33.5e12
INT8 ops/s; FP32 on its GPU ~1.3 TFLOP/s) and 102 GB/s (EDGE.md); this CPU with its peaks as
onnxruntime reaches them (a large FP32 MatMul and INT8 MatMulInteger on the benchmark's
threads) and its bandwidth from a timed large copy. A graph with INT8 weights is held to the
INT8 rate, others to the FP32 rate.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

ORIN_NANO = {"name": "Jetson Orin Nano 8GB (Super)", "int8_ops_per_s": 67e12 / 2, "fp32_flops_per_s": 1.28e12,
             "bytes_per_s": 102e9, "note": "67 sparse INT8 TOPS = ~33.5 dense; 102 GB/s (EDGE.md)"}
_DTYPE_BYTES = {1: 4, 2: 1, 3: 1, 5: 2, 6: 4, 7: 8, 9: 1, 10: 2, 11: 8, 16: 2}  # onnx TensorProto types


def _dims(vi) -> list[int]:
    return [d.dim_value if d.dim_value > 0 else 1 for d in vi.type.tensor_type.shape.dim]


def count_onnx(path: str | Path, dims: dict[str, int] | None = None) -> dict:
    """MACs, weight bytes and I/O bytes of one ONNX graph.

    Args:
        path: the .onnx file.
        dims: symbolic dimension -> size (e.g. {"batch": 1, "tokens": 12}); unnamed ones are 1.

    Returns:
        {"macs", "flops", "weight_bytes", "io_bytes", "bytes", "int8_weights"}.
    """
    import onnx

    m = onnx.load(str(path))
    dims = dims or {}
    for vi in list(m.graph.input) + list(m.graph.output):
        for d in vi.type.tensor_type.shape.dim:
            if d.dim_param:
                name = d.dim_param
                d.Clear()
                d.dim_value = int(dims.get(name, 1))
    m = onnx.shape_inference.infer_shapes(m, data_prop=True)
    shapes = {vi.name: _dims(vi) for vi in list(m.graph.value_info) + list(m.graph.input) + list(m.graph.output)}
    inits = {t.name: t for t in m.graph.initializer}
    for t in inits.values():
        shapes[t.name] = list(t.dims)
    macs = 0
    for n in m.graph.node:
        op = n.op_type
        if op in ("MatMul", "MatMulInteger", "Gemm") and n.output[0] in shapes and n.input[0] in shapes:
            out, a = shapes[n.output[0]], shapes[n.input[0]]
            trans_a = any(at.name == "transA" and at.i for at in n.attribute)
            k = a[-2] if (op == "Gemm" and trans_a) else a[-1]
            macs += int(np.prod(out)) * int(k)
        elif op == "Conv" and n.output[0] in shapes and n.input[1] in shapes:
            w = shapes[n.input[1]]
            macs += int(np.prod(shapes[n.output[0]])) * int(np.prod(w[1:]))
        elif op == "LSTM" and n.input[1] in shapes and n.input[0] in shapes:
            dirs, gates_h, inp = shapes[n.input[1]]  # W: (dirs, 4H, I)
            seq, batch = shapes[n.input[0]][0], shapes[n.input[0]][1]
            hidden = gates_h // 4
            macs += dirs * seq * batch * gates_h * (inp + hidden)
    weight_bytes = sum(int(np.prod(t.dims)) * _DTYPE_BYTES.get(t.data_type, 4) for t in inits.values())
    io = sum(int(np.prod(_dims(vi))) * _DTYPE_BYTES.get(vi.type.tensor_type.elem_type, 4)
             for vi in list(m.graph.input) + list(m.graph.output))
    int8 = any(t.data_type in (2, 3) and int(np.prod(t.dims)) > 1024 for t in inits.values())
    return {"macs": int(macs), "flops": int(2 * macs), "weight_bytes": int(weight_bytes), "io_bytes": int(io),
            "bytes": int(weight_bytes + io), "int8_weights": bool(int8)}


def graphs_per_utterance(bundle, seconds: float = 3.0, tokens: int = 9) -> dict[str, dict]:
    """Counts for each graph the device runs per utterance.

    Args:
        seconds: utterance length for the voice encoder (its partials: 1.6 s at 1.3 per second).
        tokens: word pieces of the sentence, [CLS] and [SEP] included ("Kids are talking by the door" = 8).
    """
    from mlsan_edge.features.voice import partial_slices

    partials = len(partial_slices(int(seconds * 16000)))
    out = {}
    for g in ("stage1", "stage2", "stage3", "speaker"):
        for precision, role in sorted(bundle.variants(f"student.{g}").items()):
            out[f"{g}.{precision}"] = count_onnx(bundle.path(role), {"batch": 1})
    enc = bundle.root / "encoders"
    if (enc / "voice_encoder.onnx").exists():
        out["embedding"] = {**count_onnx(enc / "voice_encoder.onnx", {"batch": partials}),
                            "per": f"{seconds:g} s utterance = {partials} partials"}
    if (enc / "text_encoder.int8.onnx").exists():
        out["text"] = {**count_onnx(enc / "text_encoder.int8.onnx", {"batch": 1, "tokens": tokens}),
                       "per": f"one sentence of {tokens} tokens"}
    return out


def _ort_matmul_rate(op: str, n: int, threads: int, seconds: float) -> float:
    """Best ops/s of one n x n x n onnxruntime MatMul (float32) or MatMulInteger (int8) over short bursts."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    int8 = op == "MatMulInteger"
    # INT8 as the quantised encoders run it: uint8 activations x int8 weights (the u8s8 kernels)
    ea, eb, ot = (TensorProto.UINT8, TensorProto.INT8, TensorProto.INT32) if int8 else (TensorProto.FLOAT,) * 3
    g = helper.make_graph([helper.make_node(op, ["a", "b"], ["c"])], "peak",
                          [helper.make_tensor_value_info("a", ea, [n, n]), helper.make_tensor_value_info("b", eb, [n, n])],
                          [helper.make_tensor_value_info("c", ot, [n, n])])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    if int8:
        feeds = {"a": rng.integers(0, 16, (n, n)).astype(np.uint8), "b": rng.integers(-8, 8, (n, n)).astype(np.int8)}
    else:
        feeds = {"a": rng.standard_normal((n, n)).astype(np.float32), "b": rng.standard_normal((n, n)).astype(np.float32)}
    sess.run(None, feeds)
    best, t_end = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < t_end:  # best burst: the peak the core gives when not preempted
        t = time.perf_counter()
        sess.run(None, feeds)
        best = max(best, 2 * n ** 3 / (time.perf_counter() - t))
    return best


def cpu_peak(seconds: float = 0.5, threads: int = 1) -> dict:
    """This CPU's peak as onnxruntime reaches it: FP32 MatMul and INT8 MatMulInteger (1024^3, best
    burst) with `threads` threads, and copy bandwidth (64 MiB, best burst)."""
    fp32 = _ort_matmul_rate("MatMul", 1024, threads, seconds)
    int8 = _ort_matmul_rate("MatMulInteger", 1024, threads, seconds)
    src = np.ones(16 * 1024 * 1024, np.float32)
    dst = np.empty_like(src)
    np.copyto(dst, src)
    bw, t_end = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < t_end:
        t = time.perf_counter()
        np.copyto(dst, src)
        bw = max(bw, 2 * src.nbytes / (time.perf_counter() - t))  # read + write
    return {"name": "this CPU", "fp32_flops_per_s": float(fp32), "int8_ops_per_s": float(int8), "bytes_per_s": float(bw),
            "threads": threads, "note": f"onnxruntime 1024^3 MatMul (FP32) and MatMulInteger (INT8) on {threads} "
            "thread(s) and a 64 MiB copy, best burst, measured in this run"}


def floor_ms(count: dict, machine: dict) -> dict:
    """The floor of one graph on one machine: compute and memory terms (ms) and which dominates."""
    rate = machine["int8_ops_per_s"] if count.get("int8_weights") else machine["fp32_flops_per_s"]
    compute = count["flops"] / rate * 1e3
    memory = count["bytes"] / machine["bytes_per_s"] * 1e3
    return {"compute_ms": compute, "memory_ms": memory, "floor_ms": max(compute, memory),
            "dominant": "compute" if compute >= memory else "memory"}


# graph -> the measured step it is compared with (None: not timed alone)
MEASURED_STEP = {"stage1": "stage1", "stage2": "stage2", "stage3": "stage3", "embedding": "embedding_3s",
                 "text": "text", "speaker": "speaker"}


def bound_report(bundle, measured: dict[str, dict], precisions: dict[str, str], cpu: dict | None = None,
                 threads: int = 1) -> dict:
    """Counts, floors on the Orin Nano and this CPU, and measured / floor for each graph.

    Args:
        measured: step -> stats (`median_ms`), the steps of `MEASURED_STEP` (stages of the
            onnxruntime INT8 run).
        precisions: stage -> precision the measured run used (to pick the matching graph).
    """
    cpu = cpu or cpu_peak(threads=threads)
    counts = graphs_per_utterance(bundle)
    rows = {}
    for key, c in counts.items():
        graph, _, precision = key.partition(".")
        if precision and precisions.get(graph, precision) != precision:
            continue  # only the variant the measured run used
        row = {**c, "orin_nano": floor_ms(c, ORIN_NANO), "cpu": floor_ms(c, cpu)}
        step = MEASURED_STEP.get(graph)
        if step and step in measured:
            med = measured[step]["median_ms"]
            row["measured_median_ms"] = med
            row["measured_over_cpu_floor"] = round(med / row["cpu"]["floor_ms"], 1) if row["cpu"]["floor_ms"] else None
        rows[graph] = row
    return {"machines": {"orin_nano": ORIN_NANO, "cpu": cpu}, "graphs": rows}
