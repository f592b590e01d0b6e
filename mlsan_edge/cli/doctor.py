"""`mlsan-edge doctor`: what this machine offers the runtime, and what to do about what is missing.

    mlsan-edge doctor                       # a readable report
    mlsan-edge doctor --json                # the same for scripts
    mlsan-edge doctor --need mic,camera,tensorrt   # exit 1 when one of these cannot work

Each check is a `Check(name, ok, detail, fix)`; `ok` is True, False (missing or broken) or None
(not applicable / informational). Nothing here loads a model except `onnxruntime`'s providers,
which are tried by running the bundle's small VAD graph (a listed provider is not a working one,
EDGE.md), and the bundle check, which hashes the default bundle's files.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path

# --need names -> the checks that must pass
NEEDS = {
    "mic": ("audio input",),
    "camera": ("camera",),
    "csi": ("opencv gstreamer", "camera"),
    "tensorrt": ("tensorrt",),
    "gpu": ("gpu",),
    "cuda": ("onnxruntime providers",),
    "display": ("display",),
    "face": ("face landmarks",),
    "bundle": ("default bundle",),
    "cache": ("cache folder",),
}
PACKAGES = ("mlsan-edge", "numpy", "onnxruntime", "onnxruntime-gpu", "opencv-python-headless", "opencv-python",
            "av", "soundfile", "tokenizers", "rich", "sounddevice", "ai-edge-litert", "tflite-runtime",
            "tensorrt", "cuda-python", "torch")


@dataclass
class Check:
    name: str
    ok: bool | None  # None: informational / not applicable
    detail: str
    fix: str = ""


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _run(cmd: list[str], timeout: float = 5.0) -> str | None:
    if shutil.which(cmd[0]) is None:
        return None
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def jetson_model() -> str | None:
    """'NVIDIA Jetson Orin Nano ... (L4T R36.4.0)' on a Jetson, else None."""
    model = None
    p = Path("/proc/device-tree/model")
    if p.exists():
        model = p.read_bytes().decode(errors="replace").strip("\x00").strip()
    rel = Path("/etc/nv_tegra_release")
    if rel.exists():
        first = rel.read_text(errors="replace").splitlines()[0] if rel.read_text(errors="replace") else ""
        model = f"{model or 'Jetson'} ({first.strip('# ').split(',')[0]})"
    return model if model and ("jetson" in model.lower() or rel.exists()) else None


# --- checks -------------------------------------------------------------------------------------
def check_python() -> list[Check]:
    out = [Check("python", sys.version_info >= (3, 10), f"{platform.python_version()} ({sys.executable}) on "
                 f"{platform.machine()} {platform.system()}", "" if sys.version_info >= (3, 10) else "Python >= 3.10 needed")]
    versions = {d: v for d in PACKAGES if (v := _version(d))}
    out.append(Check("packages", None, ", ".join(f"{d} {v}" for d, v in versions.items())))
    return out


def _run_vad(ort, model, provider: str) -> None:
    """One silero VAD inference (a 576-sample window) on `provider`; raises when it does not run there."""
    import numpy as np

    s = ort.InferenceSession(str(model), providers=[provider])
    if provider not in s.get_providers():
        raise RuntimeError("onnxruntime fell back to CPU")
    feeds = {}
    for i in s.get_inputs():
        if "int64" in i.type:
            feeds[i.name] = np.array(16000, np.int64).reshape([1] * len(i.shape))
        else:
            shape = [d if isinstance(d, int) else 1 for d in i.shape]  # batch 1 (and the state's)
            if i.name == "input":
                shape[-1] = 576  # 512 samples + the 64 of context silero prepends
            feeds[i.name] = np.zeros(shape, np.float32)
    s.run(None, feeds)


def check_onnxruntime() -> list[Check]:
    try:
        import onnxruntime as ort
    except ImportError as e:
        return [Check("onnxruntime providers", False, f"onnxruntime does not import ({e})",
                      "pip install onnxruntime (on Jetson: onnxruntime-gpu from NVIDIA's Jetson wheels, "
                      "pypi.jetson-ai-lab.dev)")]
    listed = ort.get_available_providers()
    working, broken = [], []
    model = None
    try:
        from mlsan_edge.bundle import load_bundle

        model = load_bundle("default", verify=False).path("vad")
    except Exception:  # the bundle check reports it
        model = None
    for prov in listed:
        if prov in ("CPUExecutionProvider", "AzureExecutionProvider"):  # Azure: remote endpoints, not compute
            working += [prov] if prov == "CPUExecutionProvider" else []
            continue
        if model is None:
            broken.append(f"{prov} (untested: no bundle)")
            continue
        try:
            _run_vad(ort, model, prov)
            working.append(prov)
        except Exception as e:  # any failure means the provider does not work here
            broken.append(f"{prov} ({str(e).splitlines()[0][:80]})")
    gpu = any(p in working for p in ("CUDAExecutionProvider", "TensorrtExecutionProvider"))
    detail = f"onnxruntime {ort.__version__}: working {', '.join(working) or 'none'}"
    if broken:
        detail += f"; listed but failing: {'; '.join(broken)}"
    fix = "" if gpu else ("CPU only. On a Jetson: pip install onnxruntime-gpu from NVIDIA's Jetson index "
                          "(pip's aarch64 wheel has no CUDA), e.g. --extra-index-url https://pypi.jetson-ai-lab.dev/jp6/cu126")
    return [Check("onnxruntime providers", True if gpu else None, detail, fix)]


def check_gpu() -> list[Check]:
    out = []
    try:
        import tensorrt as trt

        out.append(Check("tensorrt", True, f"TensorRT {trt.__version__}"))
    except ImportError as e:
        out.append(Check("tensorrt", False, f"not importable ({str(e).splitlines()[0][:80]})",
                         "TensorRT 10.3 comes with JetPack 6: `sudo apt-get install nvidia-jetpack` (python3-libnvinfer); "
                         "inside a venv use --system-site-packages. On a desktop GPU: pip install tensorrt. "
                         "Without it the runtime uses onnxruntime."))
    jet = jetson_model()
    smi = _run(["nvidia-smi", "--query-gpu=name,compute_cap,driver_version", "--format=csv,noheader"])
    if smi:
        out.append(Check("gpu", True, "; ".join(f"{g} (name, compute capability, driver)" for g in smi.splitlines())))
    elif jet:
        power = _run(["nvpmodel", "-q"])
        power = (power.splitlines()[0] if power else "unknown (run `sudo nvpmodel -q`)")
        out.append(Check("gpu", True, f"{jet}: Orin iGPU, compute capability 8.7 (Ampere); power mode {power}",
                         "record `nvpmodel -q` and `jetson_clocks --show` with any timing"))
    else:
        out.append(Check("gpu", False, "no NVIDIA GPU found (no nvidia-smi, not a Jetson)",
                         "CPU is fine for the demo; on a Jetson, JetPack 6 provides CUDA 12.6 and TensorRT 10.3"))
    return out


def check_audio() -> Check:
    try:
        import sounddevice as sd
    except OSError as e:
        return Check("audio input", False, f"PortAudio library missing ({e})",
                     "sudo apt-get install libportaudio2")
    except ImportError:
        return Check("audio input", False, "sounddevice is not installed",
                     "pip install 'mlsan-edge[live]' (and sudo apt-get install libportaudio2)")
    try:
        devs = [(i, d["name"]) for i, d in enumerate(sd.query_devices()) if d["max_input_channels"] > 0]
    except Exception as e:  # PortAudioError and friends
        return Check("audio input", False, f"PortAudio cannot list devices ({e})",
                     "is a microphone plugged in and is this user in the 'audio' group?")
    if not devs:
        return Check("audio input", False, "no audio input device",
                     "plug in a microphone (USB); check `arecord -l`; add this user to the 'audio' group")
    return Check("audio input", True, "; ".join(f"mic://{i} = {n}" for i, n in devs))


def check_video() -> list[Check]:
    out = []
    devs = sorted(str(p) for p in Path("/dev").glob("video*"))
    out.append(Check("camera", bool(devs), ", ".join(f"{d} (camera://{d[10:]})" for d in devs) or "no /dev/video* device",
                     "" if devs else "plug in a USB camera (camera://N = /dev/videoN); a CSI camera needs "
                     "csi://N with JetPack's OpenCV (below)"))
    try:
        import cv2
    except ImportError as e:
        out.append(Check("opencv gstreamer", False, f"OpenCV does not import ({e})",
                         "pip install 'opencv-python-headless<5'"))
        return out
    info = cv2.getBuildInformation().splitlines()
    gst = any(line.strip().startswith("GStreamer:") and "YES" in line for line in info)
    gui = next((line.split(":", 1)[1].strip() for line in info if line.strip().startswith("GUI:")), "?")
    out.append(Check("opencv gstreamer", gst, f"OpenCV {cv2.__version__} ({cv2.__file__}): GStreamer "
                     f"{'yes' if gst else 'no'}, GUI {gui}",
                     "" if gst else "pip's OpenCV wheels have no GStreamer, which csi:// cameras need: on a Jetson "
                     "`pip uninstall opencv-python opencv-python-headless` and use JetPack's (sudo apt-get install "
                     "python3-opencv; venv with --system-site-packages)"))
    disp = os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
    window = bool(disp) and gui.upper() != "NONE"
    out.append(Check("display", window, f"DISPLAY={disp or '(unset)'}; OpenCV GUI {gui}",
                     "" if window else "`mlsan-edge demo` runs headless (events on the console, --console for a "
                     "table, --out for a video); for a window set DISPLAY and install opencv-python (GUI build)"))
    return out


def check_face() -> Check:
    for mod in ("ai_edge_litert", "tflite_runtime"):
        try:
            __import__(mod)
            return Check("face landmarks", True, f"TFLite interpreter: {mod}")
        except ImportError:
            continue
    return Check("face landmarks", False, "no TFLite interpreter: faces are tracked but the visual modality is missing",
                 "pip install 'mlsan-edge[face]' (ai-edge-litert; tflite-runtime on a Jetson)")


def check_cache() -> Check:
    base = Path(os.environ.get("MLSAN_EDGE_CACHE", Path.home() / ".cache" / "mlsan_edge")).expanduser()
    try:
        base.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=base, prefix=".probe-"):
            pass
        return Check("cache folder", True, f"{base} is writable (TensorRT engines, speaker caches)")
    except OSError as e:
        return Check("cache folder", False, f"{base} is not writable ({e})",
                     "set MLSAN_EDGE_CACHE to a writable folder, or engines are rebuilt at every start")


def check_bundle(name: str = "default") -> Check:
    try:
        from mlsan_edge.bundle import check_feature_contract, load_bundle

        b = load_bundle(name)  # hashes every file
        check_feature_contract(b)
        return Check("default bundle", True, f"{b.root}: {len(b.manifest.files)} files, sha256 verified, "
                     "feature contract matches")
    except Exception as e:  # BundleError, missing files, ...
        return Check("default bundle", False, f"{str(e).splitlines()[0]}",
                     "reinstall mlsan-edge (pip install --force-reinstall mlsan-edge), or re-export the bundle")


def run_checks(bundle: str = "default") -> list[Check]:
    return [*check_python(), *check_onnxruntime(), *check_gpu(), check_audio(), *check_video(), check_face(),
            check_cache(), check_bundle(bundle)]


def unmet(checks: list[Check], needs: list[str]) -> list[str]:
    """The needs whose checks did not pass."""
    by = {c.name: c for c in checks}
    return [n for n in needs if any(by.get(name) is None or by[name].ok is not True for name in NEEDS[n])]


# --- CLI ----------------------------------------------------------------------------------------
def add_parser(sub) -> None:
    d = sub.add_parser("doctor", help="what this machine offers (GPU, TensorRT, microphone, cameras, display...) "
                       "and what to do about what is missing", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    d.add_argument("--json", action="store_true", help="print JSON")
    d.add_argument("--need", default="", help=f"comma-separated: exit 1 unless these work ({', '.join(NEEDS)})")
    d.add_argument("--bundle", default="default", help="bundle to verify")
    d.set_defaults(func=doctor_command)


def doctor_command(a: argparse.Namespace) -> int:
    needs = [n.strip() for n in a.need.split(",") if n.strip()]
    bad = [n for n in needs if n not in NEEDS]
    if bad:
        raise ValueError(f"unknown --need {bad}; valid: {', '.join(NEEDS)}")
    checks = run_checks(a.bundle)
    missing = unmet(checks, needs)
    if a.json:
        print(json.dumps({"checks": [asdict(c) for c in checks], "needs": needs, "unmet": missing}, indent=1))
    else:
        mark = {True: "ok  ", False: "MISS", None: "info"}
        for c in checks:
            print(f"[{mark[c.ok]}] {c.name:22s} {c.detail}")
            if c.fix and c.ok is not True:
                print(f"{'':29s}-> {c.fix}")
        if needs:
            print(f"needs {', '.join(needs)}: " + ("all met" if not missing else f"NOT met: {', '.join(missing)}"))
    return 1 if missing else 0
