"""Backends: the onnxruntime backend on a tiny model, input validation, backend/precision choice,
and the TensorRT buffer bookkeeping against a fake engine (real TensorRT: requires_tensorrt)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from mlsan_edge.backends import InputError, create_backend, plan_backend
from mlsan_edge.backends.engine_cache import DeviceIdentity, EngineRecord, engine_file_name, write_record
from mlsan_edge.backends.onnxruntime import OrtBackend
from mlsan_edge.backends.tensorrt import TensorBuffers, TensorRTUnavailable
from mlsan_edge.bundle import load_bundle, sha256_file
from mlsan_edge.bundle_writer import BundleWriter

HAVE_TENSORRT = importlib.util.find_spec("tensorrt") is not None

AUDIO, TEXT, CLASSES = 16, 8, 7


def make_tiny_onnx(path: Path, seed: int = 0, batch: str | int = "batch") -> Path:
    """audio (B, 16) ++ text (B, 8) -> MatMul+Add -> Relu -> MatMul -> Softmax -> probs (B, 7)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    w1 = (rng.normal(size=(AUDIO + TEXT, 32)) * 0.3).astype(np.float32)
    b1 = (rng.normal(size=(32,)) * 0.1).astype(np.float32)
    w2 = (rng.normal(size=(32, CLASSES)) * 0.3).astype(np.float32)
    nodes = [
        helper.make_node("Concat", ["audio", "text"], ["x"], axis=1),
        helper.make_node("MatMul", ["x", "W1"], ["h"]),
        helper.make_node("Add", ["h", "b1"], ["h1"]),
        helper.make_node("Relu", ["h1"], ["h2"]),
        helper.make_node("MatMul", ["h2", "W2"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=-1),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [
            helper.make_tensor_value_info("audio", TensorProto.FLOAT, [batch, AUDIO]),
            helper.make_tensor_value_info("text", TensorProto.FLOAT, [batch, TEXT]),
        ],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, [batch, CLASSES])],
        [numpy_helper.from_array(w1, "W1"), numpy_helper.from_array(b1, "b1"), numpy_helper.from_array(w2, "W2")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


IO = dict(
    inputs=[{"name": "audio", "shape": ["batch", AUDIO]}, {"name": "text", "shape": ["batch", TEXT]}],
    outputs=[{"name": "probs", "shape": ["batch", CLASSES]}],
)
PROFILES = {"audio": {"min": [1, AUDIO], "opt": [1, AUDIO], "max": [8, AUDIO]},
            "text": {"min": [1, TEXT], "opt": [1, TEXT], "max": [8, TEXT]}}  # fmt: skip


def write_bundle(dest: Path, precisions=("fp32", "int8"), tmp: Path | None = None) -> Path:
    """A bundle with `student.<p>` for each precision (the int8 file is a stand-in) and a vad."""
    src = make_tiny_onnx((tmp or dest.parent) / "src.onnx")
    with BundleWriter(dest, name="tiny", classes=[f"c{i}" for i in range(CLASSES)],
                      feature_contract={"sample_rate": 16000}, provenance={"data": "synthetic"}) as w:  # fmt: skip
        for i, p in enumerate(precisions):
            model = src if i == 0 else make_tiny_onnx(w.dir / f"student.{p}.onnx", seed=i)
            w.add_model(f"student.{p}", f"student.{p}.onnx", precision=p, profiles=PROFILES, src=model if i == 0 else None, **IO)
        w.add_model("vad", "vad.onnx", src=src, **IO)
    return dest


def feeds(batch: int = 2, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"audio": rng.normal(size=(batch, AUDIO)).astype(np.float32),
            "text": rng.normal(size=(batch, TEXT)).astype(np.float32)}  # fmt: skip


# --- onnxruntime ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ort_model(tmp_path_factory) -> OrtBackend:
    with OrtBackend(make_tiny_onnx(tmp_path_factory.mktemp("m") / "tiny.onnx"), threads=1) as b:
        yield b


def test_ort_backend_runs_and_reports_specs(ort_model):
    assert ort_model.input_names == ["audio", "text"] and ort_model.output_names == ["probs"]
    assert ort_model.inputs[0].shape == ("batch", AUDIO) and ort_model.inputs[0].dtype == "float32"
    assert ort_model.device == "cpu" and ort_model.providers == ["CPUExecutionProvider"]
    out = ort_model.run(feeds(3))
    assert out["probs"].shape == (3, CLASSES) and out["probs"].dtype == np.float32
    np.testing.assert_allclose(out["probs"].sum(-1), 1.0, rtol=1e-5)


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda f: f.pop("text"), r"missing \['text'\]"),
        (lambda f: f.update(extra=f["text"]), r"unexpected \['extra'\]"),
        (lambda f: f.update(audio=f["audio"].astype(np.float64)), r"'audio' has dtype float64, expected float32.*astype"),
        (lambda f: f.update(audio=f["audio"][0]), r"'audio' has shape \(16,\) \(rank 1\), expected rank 2"),
        (lambda f: f.update(audio=f["audio"][:, :10]), r"axis 1 must be 16, got 10"),
        (lambda f: f.update(text=f["text"][:1]), r"dimension 'batch' is 2 in input 'audio' but 1 in input 'text'"),
        (lambda f: f.update(audio=f["audio"].tolist()), r"must be a numpy array"),
    ],
)
def test_input_validation_errors_are_readable(ort_model, change, match):
    f = feeds(2)
    change(f)
    with pytest.raises(InputError, match=match):
        ort_model.run(f)


def test_ort_backend_refuses_file_changed_after_verification(tmp_path):
    path = make_tiny_onnx(tmp_path / "m.onnx")
    with pytest.raises(ValueError, match="changed since the bundle was verified"):
        OrtBackend(path, expected_sha256="0" * 64)


def test_ort_backend_reports_unparseable_file(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a protobuf")
    with pytest.raises(RuntimeError, match="onnxruntime could not load .*bad.onnx"):
        OrtBackend(bad)


# --- choosing backend and precision ---------------------------------------------------------
@pytest.fixture
def bundle(tmp_path):
    return load_bundle(write_bundle(tmp_path / "b"))


def test_create_backend_rejects_unknown_names(bundle):
    with pytest.raises(ValueError, match=r"unknown backend 'cuda'; valid: \['auto', 'onnxruntime', 'tensorrt'\]"):
        create_backend(bundle, "student", backend="cuda")
    with pytest.raises(ValueError, match=r"unknown precision 'int4'; valid: \['auto', 'fp32', 'fp16', 'int8'\]"):
        create_backend(bundle, "student", precision="int4")
    with pytest.raises(ValueError, match=r"no model 'teacher'; roles: \['student.fp32', 'student.int8', 'vad'\]"):
        create_backend(bundle, "teacher")


def test_auto_runs_onnxruntime_with_best_precision(bundle):
    with create_backend(bundle, "student", threads=1) as b:  # on the CPU, FP32 first (select.py)
        assert (b.name, b.precision) == ("onnxruntime", "fp32")
        assert b.run(feeds())["probs"].shape == (2, CLASSES)
    with create_backend(bundle.root, "student", precision="int8") as b:
        assert b.precision == "int8" and b.path == bundle.path("student.int8")
    with create_backend(bundle, "vad") as b:
        assert b.precision == "fp32"


def test_precision_choice_errors(bundle):
    with pytest.raises(ValueError, match=r"no ONNX for 'student' at fp16; available for onnxruntime: \['fp32', 'int8'\]"):
        plan_backend(bundle, "student", "onnxruntime", "fp16")
    with pytest.raises(ValueError, match="role 'student.int8' is int8; pass role='student'"):
        plan_backend(bundle, "student.int8", precision="fp32")
    assert plan_backend(bundle, "student.fp32").onnx_role == "student.fp32"
    assert plan_backend(bundle, "vad").precision == "fp32"
    with pytest.raises(ValueError, match=r"no ONNX for 'vad' at int8; available for onnxruntime: \['fp32'\]"):
        plan_backend(bundle, "vad", precision="int8")
    fake_engine(bundle, "vad", "fp16")  # a plain role: TensorRT builds fp16 from its fp32 ONNX
    assert plan_backend(bundle, "vad", device=DEVICE).precision == "fp16"


DEVICE = DeviceIdentity("10.3.0", "Orin", "8.7")


def fake_engine(bundle, role: str, precision: str, device: DeviceIdentity = DEVICE) -> Path:
    """An engine file + record in the bundle's engine folder, as ensure_engine would leave it."""
    sha = bundle.file_sha256(bundle.model_spec(role).file)
    path = bundle.engine_dir / engine_file_name(sha, precision, device, role)
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(b"engine-" + precision.encode())
    write_record(path, EngineRecord(path.name, role, sha, precision, device.trt_version, device.gpu_name,
                                    device.compute_capability, sha256_file(path), path.stat().st_size))  # fmt: skip
    return path


def test_auto_picks_tensorrt_only_with_an_engine_for_this_device(bundle):
    assert plan_backend(bundle, "student", device=DEVICE).backend == "onnxruntime"  # no engine yet
    engine = fake_engine(bundle, "student.fp32", "fp16")  # fp16 is built from the fp32 ONNX
    plan = plan_backend(bundle, "student", device=DEVICE)
    assert (plan.backend, plan.precision, plan.onnx_role, plan.engine) == ("tensorrt", "fp16", "student.fp32", engine)
    other = DeviceIdentity("10.4.0", "Orin", "8.7")
    assert plan_backend(bundle, "student", device=other).backend == "onnxruntime"
    with pytest.raises(FileNotFoundError, match="mlsan-edge build-engine --bundle .* --precision int8"):
        plan_backend(bundle, "student", "tensorrt", device=other)
    fake_engine(bundle, "student.int8", "int8")
    assert plan_backend(bundle, "student", device=DEVICE).precision == "int8"


@pytest.mark.skipif(HAVE_TENSORRT, reason="checks the message when TensorRT is absent")
def test_explicit_tensorrt_without_tensorrt_says_how_to_get_it(bundle):
    with pytest.raises(TensorRTUnavailable, match="nvidia-jetpack"):
        create_backend(bundle, "student", backend="tensorrt")


# --- TensorRT buffer bookkeeping against a fake ---------------------------------------------
class FakeEngine:
    """TensorRT-10-shaped engine: inputs x (-1, 4) float32 and n (1,) int32; output y (-1, 4)."""

    tensors = {"x": ("INPUT", "FLOAT", (-1, 4)), "n": ("INPUT", "INT32", (1,)), "y": ("OUTPUT", "FLOAT", (-1, 4))}
    num_io_tensors = 3

    def get_tensor_name(self, i):
        return list(self.tensors)[i]

    def get_tensor_mode(self, name):
        return type("TensorIOMode", (), {"name": self.tensors[name][0]})()

    def get_tensor_dtype(self, name):
        return "DataType." + self.tensors[name][1]

    def get_tensor_shape(self, name):
        return list(self.tensors[name][2])

    def get_tensor_profile_shape(self, name, profile):
        assert name == "x" and profile == 0
        return [(1, 4), (2, 4), (16, 4)]


class FakeMemory:
    """Allocator over a dict of bytearrays; 'pointers' are ints."""

    def __init__(self):
        self.blocks, self.next, self.log = {}, 0x1000, []

    def malloc(self, n):
        self.next += 0x1000
        self.blocks[self.next] = bytearray(n)
        self.log.append(("malloc", n))
        return self.next

    def free(self, ptr):
        self.log.append(("free", len(self.blocks.pop(ptr))))

    def htod(self, ptr, host, stream):
        self.blocks[ptr][: host.nbytes] = host.tobytes()

    def dtoh(self, host, ptr, stream):
        host.reshape(-1).view(np.uint8)[:] = np.frombuffer(bytes(self.blocks[ptr][: host.nbytes]), np.uint8)

    create_stream = lambda self: "stream"  # noqa: E731
    stream_handle = lambda self, s: 42  # noqa: E731
    synchronize = destroy_stream = lambda self, s: None  # noqa: E731


class FakeContext:
    """Computes y = x * n[0] through the fake memory, like an engine would on the GPU."""

    def __init__(self, mem):
        self.mem, self.shapes, self.addr, self.calls = mem, {}, {}, []

    def set_input_shape(self, name, shape):
        self.calls.append(("set_input_shape", name, shape))
        self.shapes[name] = tuple(shape)
        return True

    def get_tensor_shape(self, name):
        return self.shapes.get("x", (-1, 4)) if name == "y" else self.shapes[name]

    def set_tensor_address(self, name, ptr):
        self.calls.append(("set_tensor_address", name))
        self.addr[name] = ptr

    def execute_async_v3(self, stream_handle):
        assert stream_handle == 42
        x = np.frombuffer(bytes(self.mem.blocks[self.addr["x"]]), np.float32)[: np.prod(self.shapes["x"])]
        n = np.frombuffer(bytes(self.mem.blocks[self.addr["n"]][:4]), np.int32)[0]
        y = (x * n).astype(np.float32).tobytes()
        self.mem.blocks[self.addr["y"]][: len(y)] = y
        return True


@pytest.fixture
def buffers():
    mem = FakeMemory()
    return TensorBuffers(FakeEngine(), FakeContext(mem), mem)


def test_buffers_read_specs_from_the_engine(buffers):
    assert [(s.name, s.shape, s.dtype) for s in buffers.inputs] == [("x", (-1, 4), "float32"), ("n", (1,), "int32")]
    assert [(s.name, s.dtype) for s in buffers.outputs] == [("y", "float32")]
    assert buffers.profile_range("x") == ((1, 4), (2, 4), (16, 4)) and buffers.profile_range("n") is None


def test_buffers_allocate_from_shapes_and_grow_only(buffers):
    mem, ctx = buffers.alloc, buffers.context
    assert buffers.set_input_shapes({"x": (2, 4), "n": (1,)}) == {"y": (2, 4)}  # output shape queried after set
    assert buffers.capacity == {"x": 32, "n": 4, "y": 32}  # 2*4 float32, 1 int32
    ctx.calls.clear()
    buffers.set_input_shapes({"x": (1, 4), "n": (1,)})  # smaller: no reallocation, no rebinding
    assert mem.log == [("malloc", 32), ("malloc", 4), ("malloc", 32)]
    assert ctx.calls == [("set_input_shape", "x", (1, 4))]
    buffers.set_input_shapes({"x": (8, 4), "n": (1,)})  # larger: x and y reallocated and rebound
    assert mem.log[3:] == [("free", 32), ("malloc", 128), ("free", 32), ("malloc", 128)]
    assert ("set_tensor_address", "x") in ctx.calls and ("set_tensor_address", "y") in ctx.calls
    buffers.free()
    assert mem.blocks == {} and buffers.capacity == {}


def test_buffers_execute_copies_through_device_memory(buffers):
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    out = buffers.execute({"x": x, "n": np.array([3], np.int32)}, stream="stream")
    np.testing.assert_array_equal(out["y"], x * 3)
    out = buffers.execute({"x": x[:1], "n": np.array([2], np.int32)}, stream="stream")
    np.testing.assert_array_equal(out["y"], x[:1] * 2)


def test_buffers_reject_shapes_outside_the_profile(buffers):
    with pytest.raises(InputError, match=r"'x' has shape \(32, 4\), outside .* min \(1, 4\) .. max \(16, 4\)"):
        buffers.set_input_shapes({"x": (32, 4), "n": (1,)})


def test_buffers_reject_unsupported_dtypes():
    engine = FakeEngine()
    engine.tensors = dict(engine.tensors, x=("INPUT", "BF16", (-1, 4)))
    with pytest.raises(TypeError, match="BF16 is not supported"):
        TensorBuffers(engine, FakeContext(FakeMemory()), FakeMemory())


# --- real TensorRT (Jetson / NVIDIA GPU) ----------------------------------------------------
@pytest.mark.requires_tensorrt
@pytest.mark.requires_tensorrt
@pytest.mark.requires_cuda
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_tensorrt_backend_matches_onnxruntime(tmp_path, precision):
    from mlsan_edge.backends.tensorrt_build import build_engine
    from mlsan_edge.backends.tensorrt import TensorRTBackend

    onnx_path = make_tiny_onnx(tmp_path / "tiny.onnx")
    profiles = {"audio": ((1, AUDIO), (2, AUDIO), (8, AUDIO)), "text": ((1, TEXT), (2, TEXT), (8, TEXT))}
    engine = build_engine(onnx_path, tmp_path / "tiny.engine", precision, profiles, tmp_path / "t.cache", 256, False)
    f = feeds(4)
    with TensorRTBackend(engine, precision=precision) as trt_b, OrtBackend(onnx_path) as ort_b:
        np.testing.assert_allclose(trt_b.run(f)["probs"], ort_b.run(f)["probs"], atol=1e-2)


def test_tensorrt_backend_runs_through_the_buffers(monkeypatch, tmp_path):
    import sys
    import types

    from mlsan_edge.backends import tensorrt as trt_mod

    mem = FakeMemory()

    class Engine(FakeEngine):
        def create_execution_context(self):
            return FakeContext(mem)

    runtime = types.SimpleNamespace(deserialize_cuda_engine=lambda data: Engine() if data == b"good" else None)
    fake = types.SimpleNamespace(__version__="10.3.0", Logger=lambda level: None, Runtime=lambda logger: runtime)
    fake.Logger.WARNING = 2
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    monkeypatch.setattr(trt_mod, "query_gpu", lambda: ("Orin", "8.7"))
    (tmp_path / "good.engine").write_bytes(b"good")
    with trt_mod.TensorRTBackend(tmp_path / "good.engine", allocator=mem) as b:
        assert b.input_names == ["x", "n"] and b.device == "cuda:0 Orin"
        x = np.ones((2, 4), np.float32)
        np.testing.assert_array_equal(b.run({"x": x, "n": np.array([5], np.int32)})["y"], x * 5)
        with pytest.raises(InputError, match="'n' has dtype int64, expected int32"):
            b.run({"x": x, "n": np.array([5])})
    assert mem.blocks == {}  # close() freed every buffer
    (tmp_path / "old.engine").write_bytes(b"from TensorRT 8")
    with pytest.raises(RuntimeError, match="could not load .*old.engine: it was probably built with another TensorRT"):
        trt_mod.TensorRTBackend(tmp_path / "old.engine", allocator=mem)
