"""Engine building (backends/tensorrt_build.py) and `mlsan-edge build-engine`, as far as they run
without TensorRT: cache names and invalidation, profiles, trtexec command lines, the missing-TensorRT
message, progress bars, and the builder's use of the TensorRT API against a recording fake."""

from __future__ import annotations

import io
import os
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from mlsan_edge.backends import engine_cache, tensorrt as trt_backend
from mlsan_edge.backends import tensorrt_build as tb
from mlsan_edge.backends.engine_cache import DeviceIdentity, engine_cache_name, find_engine
from mlsan_edge.backends.stages import GRAPHS
from mlsan_edge.bundle import ModelSpec, TensorSpec, load_bundle
from mlsan_edge.bundle_writer import BundleWriter
from mlsan_edge.cli import main as cli_main
from test_backends import AUDIO, CLASSES, IO, PROFILES as MANIFEST_PROFILES, TEXT, fake_engine, make_tiny_onnx, write_bundle

SHA = "3fa9c2e1d0b4a7c6" + "ab" * 24
BASE = dict(onnx_sha256=SHA, precision="int8", trt_version="10.3.0", gpu_name="Orin", compute_capability="8.7")
ORIN = DeviceIdentity("10.3.0", "Orin", "8.7")


@pytest.fixture
def bundle(tmp_path, monkeypatch):
    monkeypatch.setenv("MLSAN_EDGE_CACHE", str(tmp_path / "cache"))
    return load_bundle(write_bundle(tmp_path / "b"))


# --- cache names ----------------------------------------------------------------------------
def test_cache_name_encodes_everything_and_is_sanitised():
    name = engine_cache_name(**BASE, prefix="student")
    assert name == "student-int8_trt10.3.0_orin_sm87_3fa9c2e1d0b4a7c6.engine"
    weird = engine_cache_name(**{**BASE, "gpu_name": "NVIDIA H100 80GB/HBM3 (x)"})
    assert weird == "int8_trt10.3.0_nvidia-h100-80gb-hbm3-x_sm87_3fa9c2e1d0b4a7c6.engine"
    assert "/" not in weird and " " not in weird
    assert engine_cache_name(**BASE) == engine_cache_name(**{**BASE, "onnx_sha256": SHA.upper()})


@pytest.mark.parametrize(
    "field, value",
    [("onnx_sha256", "0123456789abcdef" + "0" * 48), ("precision", "fp16"), ("trt_version", "10.4.0"),
     ("gpu_name", "NVIDIA H100"), ("compute_capability", "9.0")],  # fmt: skip
)
def test_cache_name_changes_with_each_input(field, value):
    assert engine_cache_name(**{**BASE, field: value}) != engine_cache_name(**BASE)


def test_cache_name_rejects_a_non_hash():
    with pytest.raises(ValueError, match="onnx_sha256 must be a hex digest"):
        engine_cache_name(**{**BASE, "onnx_sha256": "student.onnx"})


# --- invalidation ---------------------------------------------------------------------------
def test_engine_is_found_only_for_the_same_device_version_precision_and_onnx(bundle):
    path = fake_engine(bundle, "student.int8", "int8", ORIN)
    assert find_engine(bundle, "student.int8", "int8", ORIN) == path
    for other in (DeviceIdentity("10.4.0", "Orin", "8.7"), DeviceIdentity("10.3.0", "NVIDIA H100", "8.7"),
                  DeviceIdentity("10.3.0", "Orin", "9.0")):  # fmt: skip
        assert find_engine(bundle, "student.int8", "int8", other) is None
    assert find_engine(bundle, "student.int8", "fp16", ORIN) is None
    assert find_engine(bundle, "student.fp32", "int8", ORIN) is None  # another ONNX file


def test_engine_with_a_lying_name_or_changed_bytes_is_not_loaded(bundle, caplog):
    path = fake_engine(bundle, "student.int8", "int8", ORIN)
    rec = path.with_name(path.name + ".json")
    text = rec.read_text()
    rec.write_text(text.replace('"10.3.0"', '"10.0.1"'))  # record says another version
    assert find_engine(bundle, "student.int8", "int8", ORIN) is None
    assert "trt_version is '10.0.1', need '10.3.0'" in caplog.text
    rec.write_text(text)
    path.write_bytes(b"engine-int9")  # same size, other bytes
    assert find_engine(bundle, "student.int8", "int8", ORIN) is None


def test_reexported_bundle_does_not_reuse_old_engines(tmp_path, monkeypatch):
    monkeypatch.setenv("MLSAN_EDGE_CACHE", str(tmp_path / "cache"))
    b1 = load_bundle(write_bundle(tmp_path / "b"))
    fake_engine(b1, "student.int8", "int8", ORIN)
    b2 = load_bundle(write_bundle(tmp_path / "b"))  # re-export replaces the folder, engines/ included
    assert find_engine(b2, "student.int8", "int8", ORIN) is None
    other = engine_cache.sha256_file(make_tiny_onnx(tmp_path / "other.onnx", seed=99))
    name1 = engine_cache.engine_file_name(b1.file_sha256("student.int8.onnx"), "int8", ORIN, "student.int8")
    assert name1 != engine_cache.engine_file_name(other, "int8", ORIN, "student.int8")
    assert name1.startswith("student-int8_trt10.3.0_orin_sm87_")


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root can write to read-only folders")
def test_read_only_bundle_falls_back_to_the_user_cache(bundle, tmp_path):
    os.chmod(bundle.root, 0o555)
    try:
        d = engine_cache.writable_engine_dir(bundle)
    finally:
        os.chmod(bundle.root, 0o755)
    assert d.is_relative_to(tmp_path / "cache")


def test_user_cache_is_used_when_the_bundle_folder_is_not_writable(bundle, tmp_path, monkeypatch):
    monkeypatch.setattr(engine_cache, "is_writable_dir", lambda d: not d.is_relative_to(bundle.root))
    d = engine_cache.writable_engine_dir(bundle)
    assert d.is_relative_to(tmp_path / "cache") and d.name.startswith("tiny-")


# --- profiles and trtexec -------------------------------------------------------------------
SPECS = [TensorSpec("audio", ("batch", AUDIO)), TensorSpec("text", (-1, TEXT))]
PROFILES = {"audio": ((1, AUDIO), (2, AUDIO), (8, AUDIO)), "text": ((1, TEXT), (2, TEXT), (8, TEXT))}


def test_profiles_come_from_the_manifest(bundle):
    assert tb.profiles_from_spec(bundle.model_spec("student.fp32")) == {
        "audio": ((1, AUDIO), (1, AUDIO), (8, AUDIO)), "text": ((1, TEXT), (1, TEXT), (8, TEXT))}  # fmt: skip
    spec = ModelSpec("x.onnx", tuple(SPECS), ())
    with pytest.raises(ValueError, match="'audio' has dynamic shape .* no optimisation profile"):
        tb.profiles_from_spec(spec)
    assert tb.profiles_from_spec(ModelSpec("x.onnx", (TensorSpec("a", (1, 4)),), ())) == {}


@pytest.mark.parametrize(
    "profiles, match",
    [
        ({"audio": PROFILES["audio"]}, "'text' has dynamic shape"),
        ({**PROFILES, "mask": PROFILES["text"]}, r"unknown inputs \['mask'\]"),
        ({**PROFILES, "text": ((8, TEXT), (2, TEXT), (1, TEXT))}, "axis 0: need min <= opt <= max, got 8, 2, 1"),
        ({**PROFILES, "text": ((1, 9), (1, 9), (1, 9))}, r"axis 1 is static \(8\)"),
        ({**PROFILES, "text": ((1,), (1,), (1,))}, "3 shapes of rank 2"),
    ],
)
def test_bad_profiles_are_explained(profiles, match):
    with pytest.raises(ValueError, match=match):
        tb.validate_profiles(SPECS, profiles)


def test_trtexec_command():
    cmd = tb.trtexec_command("my models/s.onnx", "s.engine", "int8", PROFILES, "t.cache", 512)
    assert cmd == (
        "trtexec '--onnx=my models/s.onnx' --saveEngine=s.engine --int8 --fp16 "
        "--minShapes=audio:1x16,text:1x8 --optShapes=audio:2x16,text:2x8 --maxShapes=audio:8x16,text:8x8 "
        "--timingCacheFile=t.cache --memPoolSize=workspace:512M"
    )
    assert tb.trtexec_command("s.onnx", "s.engine", "fp16") == "trtexec --onnx=s.onnx --saveEngine=s.engine --fp16"
    assert "--fp16" not in tb.trtexec_command("s.onnx", "s.engine", "fp32")
    with pytest.raises(ValueError, match=r"unknown precision 'int4'; valid: \['fp32', 'fp16', 'int8'\]"):
        tb.trtexec_command("s.onnx", "s.engine", "int4")


def test_timing_cache_name_is_per_device():
    assert tb.timing_cache_name(ORIN) == "timing_trt10.3.0_orin_sm87.cache"
    assert tb.timing_cache_name(DeviceIdentity("10.3.0", "Orin", "8.6")) != tb.timing_cache_name(ORIN)


def write_stage_bundle(dest: Path) -> Path:
    """A bundle with the four stage graphs of a student (fp32 each, int8 for stage2 only)."""
    with BundleWriter(dest, name="stages", classes=[f"c{i}" for i in range(CLASSES)],
                      feature_contract={"sample_rate": 16000}, provenance={"data": "synthetic"}) as w:  # fmt: skip
        for i, g in enumerate(GRAPHS):
            for p in ("fp32", "int8") if g == "stage2" else ("fp32",):
                make_tiny_onnx(w.dir / f"student.{g}.{p}.onnx", seed=i)
                w.add_model(f"student.{g}.{p}", f"student.{g}.{p}.onnx", precision=p, profiles=MANIFEST_PROFILES, **IO)
    return dest


@pytest.fixture
def stage_bundle(tmp_path, monkeypatch):
    monkeypatch.setenv("MLSAN_EDGE_CACHE", str(tmp_path / "cache"))
    return load_bundle(write_stage_bundle(tmp_path / "s"))


def test_cli_prints_the_trtexec_commands_without_tensorrt(stage_bundle, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    assert cli_main(["build-engine", "--bundle", str(stage_bundle.root), "--trtexec"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4 and all(line.startswith("trtexec --onnx=") for line in lines)
    assert "student.stage2.int8.onnx" in lines[2] and "--int8 --fp16" in lines[2]  # int8 where the bundle has it
    assert "student.stage1.fp32.onnx" in lines[1] and "--fp16" in lines[1] and "--int8" not in lines[1]
    assert cli_main(["build-engine", "--bundle", str(stage_bundle.root), "--trtexec", "--graphs", "stage3"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 1
    assert cli_main(["build-engine", "--bundle", str(stage_bundle.root), "--trtexec", "--graphs", "stage9"]) == 2
    assert "unknown graph ['stage9']" in capsys.readouterr().err


# --- no TensorRT / no GPU -------------------------------------------------------------------
def test_missing_tensorrt_says_what_and_how(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import tensorrt -> ImportError
    with pytest.raises(trt_backend.TensorRTUnavailable) as e:
        trt_backend.check_tensorrt()
    msg = str(e.value)
    assert "TensorRT is not importable" in msg
    for hint in ("JetPack 6", "TensorRT 10.3", "sudo apt install nvidia-tensorrt", "python3-libnvinfer", "nvidia-jetpack",
                 "Python 3.10", "cuda-python==12.6", "pip install tensorrt", "pypi.nvidia.com", "backend='onnxruntime'"):  # fmt: skip
        assert hint in msg
    assert isinstance(e.value.__cause__, ImportError)


def test_no_gpu_and_old_tensorrt_are_explained(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", types.SimpleNamespace(__version__="10.3.0"))

    def no_gpu():
        raise RuntimeError("no CUDA GPU found (cudaGetDeviceCount: cudaErrorNoDevice, ? devices)")

    monkeypatch.setattr(trt_backend, "query_gpu", no_gpu)
    with pytest.raises(trt_backend.TensorRTUnavailable, match="TensorRT 10.3.0 is installed but no CUDA GPU found"):
        trt_backend.check_tensorrt()
    monkeypatch.setitem(sys.modules, "tensorrt", types.SimpleNamespace(__version__="8.6.1"))
    with pytest.raises(trt_backend.TensorRTUnavailable, match="TensorRT 8.6.1 found; mlsan_edge needs TensorRT >= 10"):
        trt_backend.check_tensorrt()


def test_cuda_python_is_the_one_cuda_binding_and_its_absence_is_explained(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", types.SimpleNamespace(__version__="10.3.0"))
    for name in ("cuda", "cuda.bindings", "cuda.bindings.runtime", "cuda.cudart"):
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(trt_backend.TensorRTUnavailable, match=r"cuda-python is not installed.*JetPack 6 \(CUDA 12.6\): `pip install 'cuda-python==12.6.\*'`"):
        trt_backend.check_tensorrt()
    with pytest.raises(trt_backend.TensorRTUnavailable, match="cuda-python is not installed"):
        trt_backend.default_allocator()


def test_build_engine_without_tensorrt_writes_nothing(bundle, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(trt_backend.TensorRTUnavailable):
        tb.ensure_engine(bundle, "student", "int8")
    assert not bundle.engine_dir.exists()


def test_cli_without_tensorrt_says_what_is_missing_in_one_line(stage_bundle, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    assert cli_main(["build-engine", "--bundle", str(stage_bundle.root)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.strip().splitlines()) == 1, err
    assert err.startswith("mlsan-edge build-engine: error: TensorRT is not importable")
    assert "TensorRT 10.3 comes with JetPack 6" in err and "sudo apt install nvidia-tensorrt" in err
    assert not stage_bundle.engine_dir.exists()
    with pytest.raises(trt_backend.TensorRTUnavailable):  # -v: the traceback
        cli_main(["-v", "build-engine", "--bundle", str(stage_bundle.root)])


# --- progress -------------------------------------------------------------------------------
def test_progress_bars_follow_phases_and_can_cancel():
    out = io.StringIO()
    bars = tb.ProgressBars(file=out)
    bars.phase_start("Building engine", None, 3)
    bars.phase_start("Tactic search", "Building engine", 10)
    assert bars.step_complete("Tactic search", 4) and bars.bars["Tactic search"].n == 5
    bars.phase_finish("Tactic search")
    bars.step_complete("Building engine", 2)
    bars.cancelled = True
    assert bars.step_complete("Building engine", 2) is False
    bars.phase_finish("Building engine")
    assert bars.bars == {} and "Building engine" in out.getvalue()


# --- build_engine's use of the TensorRT API, against a recording fake -----------------------
def fake_tensorrt(calls: list, *, parse_ok=True, quantized=True, built=b"ENGINE"):
    """Just enough of the `tensorrt` 10 module for build_engine; records what it is asked."""
    ns = types.SimpleNamespace
    flag = ns(FP16="FP16", INT8="INT8")
    layer_type = ns(QUANTIZE="QUANTIZE", MATRIX_MULTIPLY="MATRIX_MULTIPLY")

    class Parser:
        num_errors = 0 if parse_ok else 1

        def __init__(self, network, logger):
            pass

        def parse_from_file(self, path):
            calls.append(("parse", Path(path).name))
            return parse_ok

        def get_error(self, i):
            return ns(desc=lambda: "Unsupported op DFT", node=lambda: 3, node_name=lambda: "/stft/DFT",
                      node_operator=lambda: "DFT")  # fmt: skip

    network = ns(
        num_inputs=2, get_input=lambda i: [ns(name="audio", shape=[-1, AUDIO]), ns(name="text", shape=[-1, TEXT])][i],
        num_layers=1, get_layer=lambda i: ns(type="QUANTIZE" if quantized else "MATRIX_MULTIPLY"),
    )  # fmt: skip

    class Config:
        progress_monitor = None

        def set_memory_pool_limit(self, pool, size):
            calls.append(("workspace", size))

        def set_flag(self, f):
            calls.append(("flag", f))

        def add_optimization_profile(self, p):
            calls.append(("profile", dict(p.shapes)))

        def create_timing_cache(self, blob):
            calls.append(("timing_cache_in", bytes(blob)))
            return ns(serialize=lambda: b"TIMING")

        def set_timing_cache(self, cache, ignore_mismatch):
            return True

        def get_timing_cache(self):
            return ns(serialize=lambda: b"TIMING")

    class Profile:
        def __init__(self):
            self.shapes = {}

        def set_shape(self, name, lo, opt, hi):
            self.shapes[name] = (tuple(lo), tuple(opt), tuple(hi))

    class Builder:
        def __init__(self, logger):
            pass

        def create_network(self, flags):
            assert flags == 0
            return network

        def create_builder_config(self):
            self.config = Config()
            return self.config

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, net, config):
            mon = config.progress_monitor
            mon.phase_start("Building engine", None, 2)
            mon.step_complete("Building engine", 0)
            mon.phase_finish("Building engine")
            calls.append(("build",))
            return built

    class IProgressMonitor:
        def __init__(self):
            calls.append(("monitor",))

    return ns(__version__="10.3.0", Logger=type("Logger", (), {"WARNING": 2, "__init__": lambda s, lvl: None}),
              Builder=Builder, OnnxParser=Parser, BuilderFlag=flag, LayerType=layer_type,
              MemoryPoolType=ns(WORKSPACE="WORKSPACE"), IProgressMonitor=IProgressMonitor)  # fmt: skip


@pytest.fixture
def fake_trt(monkeypatch):
    calls: list = []

    def install(**kw):
        monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt(calls, **kw))
        monkeypatch.setattr(trt_backend, "query_gpu", lambda: ("Orin", "8.7"))
        return calls

    return install


def test_build_engine_drives_the_tensorrt_api(fake_trt, tmp_path):
    calls = fake_trt()
    (tmp_path / "t.cache").write_bytes(b"OLD")
    out = tb.build_engine(tmp_path / "s.onnx", tmp_path / "e" / "s.engine", "int8", PROFILES, tmp_path / "t.cache", 256, False)
    assert out.read_bytes() == b"ENGINE" and (tmp_path / "t.cache").read_bytes() == b"TIMING"
    assert ("flag", "FP16") in calls and ("flag", "INT8") in calls and ("workspace", 256 << 20) in calls
    assert ("profile", PROFILES) in calls and ("timing_cache_in", b"OLD") in calls and ("monitor",) in calls
    assert [c for c in calls if c[0] in ("parse", "build")] == [("parse", "s.onnx"), ("build",)]
    assert sorted(p.name for p in (tmp_path / "e").iterdir()) == ["s.engine"]  # no temp files left


def test_build_engine_explains_parser_errors_and_missing_qdq(fake_trt, tmp_path):
    fake_trt(parse_ok=False)
    with pytest.raises(tb.EngineBuildError, match=r"cannot parse .*s.onnx:\n  /stft/DFT \(DFT\): Unsupported op DFT"):
        tb.build_engine(tmp_path / "s.onnx", tmp_path / "s.engine", "fp16", PROFILES, progress=False)
    fake_trt(quantized=False)
    with pytest.raises(tb.EngineBuildError, match="has no Q/DQ nodes: INT8 needs the quantised ONNX"):
        tb.build_engine(tmp_path / "s.onnx", tmp_path / "s.engine", "int8", PROFILES, progress=False)
    fake_trt(built=None)
    with pytest.raises(tb.EngineBuildError, match="could not build"):
        tb.build_engine(tmp_path / "s.onnx", tmp_path / "s.engine", "fp16", PROFILES, progress=False)
    assert not (tmp_path / "s.engine").exists()


def test_ensure_engine_builds_once_then_reuses(fake_trt, bundle):
    calls = fake_trt()
    path = tb.ensure_engine(bundle, "student", "int8", progress=False)
    assert path.parent == bundle.engine_dir and path.name.startswith("student-int8_trt10.3.0_orin_sm87_")
    assert find_engine(bundle, "student.int8", "int8", ORIN) == path
    assert (bundle.engine_dir / "timing_trt10.3.0_orin_sm87.cache").is_file()
    assert tb.ensure_engine(bundle, "student", "int8") == path and calls.count(("build",)) == 1
    fp16 = tb.ensure_engine(bundle, "student", "fp16", progress=False)  # from the fp32 ONNX
    assert fp16.name.startswith("student-fp16_") and calls.count(("build",)) == 2


def test_cli_builds_every_stage_graph_once(fake_trt, stage_bundle, capsys):
    calls = fake_trt()
    assert cli_main(["build-engine", "--bundle", str(stage_bundle.root), "--precision", "int8"]) == 0
    out, err = capsys.readouterr()
    engines = [Path(line) for line in out.splitlines()]
    assert [e.name.split("_")[0] for e in engines] == [
        "student.speaker-fp16", "student.stage1-fp16", "student.stage2-int8", "student.stage3-fp16"]  # fmt: skip
    assert all(e.is_file() for e in engines) and err.count("trtexec --onnx=") == 4
    assert calls.count(("build",)) == 4
    assert cli_main(["build-engine", "--bundle", str(stage_bundle.root)]) == 0  # cached now
    assert calls.count(("build",)) == 4
