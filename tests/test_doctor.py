"""`mlsan-edge doctor` on a machine with no devices (none are faked in: sounddevice, cameras and a
display are hidden), and --need's exit status."""

import json
import sys

import pytest

from mlsan_edge.cli import main
from mlsan_edge.cli import doctor


@pytest.fixture
def no_devices(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "sounddevice", None)  # import fails as without the package
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    monkeypatch.setenv("MLSAN_EDGE_CACHE", str(tmp_path / "cache"))
    real_glob = doctor.Path.glob
    monkeypatch.setattr(doctor.Path, "glob", lambda self, pat: iter(()) if str(self) == "/dev" else real_glob(self, pat))
    monkeypatch.setattr(doctor, "_run", lambda cmd, timeout=5.0: None)  # no nvidia-smi, no nvpmodel
    monkeypatch.setattr(doctor, "jetson_model", lambda: None)


def test_doctor_json_without_devices(no_devices, capsys):
    assert main(["doctor", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    checks = {c["name"]: c for c in res["checks"]}
    for name in ("python", "onnxruntime providers", "tensorrt", "gpu", "audio input", "camera",
                 "opencv gstreamer", "display", "cache folder", "default bundle"):
        assert name in checks, name
    for name in ("audio input", "camera", "tensorrt", "gpu", "display"):
        assert checks[name]["ok"] is False and checks[name]["fix"], name
    assert "mlsan-edge[live]" in checks["audio input"]["fix"]
    assert checks["cache folder"]["ok"] is True and checks["default bundle"]["ok"] is True
    assert "JetPack" in checks["tensorrt"]["fix"]


def test_doctor_need_sets_the_exit_status(no_devices, capsys):
    assert main(["doctor", "--json", "--need", "mic,camera,tensorrt"]) == 1
    assert json.loads(capsys.readouterr().out)["unmet"] == ["mic", "camera", "tensorrt"]
    assert main(["doctor", "--need", "bundle,cache"]) == 0
    assert "all met" in capsys.readouterr().out


def test_doctor_without_portaudio(monkeypatch):
    class Broken:
        def __getattr__(self, name):
            raise AssertionError

    import builtins

    real = builtins.__import__

    def imp(name, *a, **k):
        if name == "sounddevice":
            raise OSError("PortAudio library not found")
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", imp)
    c = doctor.check_audio()
    assert c.ok is False and "libportaudio2" in c.fix
