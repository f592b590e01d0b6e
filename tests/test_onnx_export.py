"""ONNX export of the stage graphs: simplified, opset 17, parity with torch; INT8 QDQ with
zero-point 0; bundle roles and the runtime's per-graph precision fallback; bad calibration."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import HAVE_TORCH, requires_torch
from mlsan_edge.data.replay import stream_order
from mlsan_edge.profile import GlobalStats

pytestmark = requires_torch

if HAVE_TORCH:
    import torch

    from mlsan_edge.export.onnx_export import PARITY_TOL, derive_inputs, export_stages, quantise_stages, write_stage_bundle
    from test_stages import make_model, make_table, tiny


@pytest.fixture(autouse=True)
def _one_thread(torch_one_thread):
    """Every test here runs torch on one thread (conftest.torch_one_thread)."""


def calibration(table):
    from calibration_data.build import raw_inputs

    return raw_inputs(table, stream_order(table), GlobalStats.fit(table))


def test_export_is_simplified_opset17_and_matches_torch(tmp_path):
    import onnx

    table = make_table()
    model = make_model(tiny("teacher"), table)
    real = derive_inputs(model, calibration(table))
    res = export_stages(model, tmp_path, "teacher", real=real)
    assert set(res) == {"speaker", "stage1", "stage2", "stage3"}
    for g, r in res.items():
        m = onnx.load(str(r["path"]))
        assert m.opset_import[0].version == 17
        assert not any(n.op_type in ("Identity", "EyeLike", "Loop", "If") for n in m.graph.node), g
        assert m.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
        assert r["max_abs_diff"]["random"] <= PARITY_TOL and r["max_abs_diff"]["real"] <= PARITY_TOL


def test_int8_is_symmetric_qdq_and_close(tmp_path):
    import onnxruntime as ort

    from mlsan_edge.export.quantize import check_qdq

    table = make_table(n_groups=6)
    model = make_model(tiny("student"), table)
    real = derive_inputs(model, calibration(table))
    graphs = export_stages(model, tmp_path, "student")
    q = quantise_stages(graphs, real, tmp_path, "student")
    assert set(q) == {"speaker", "stage2", "stage3"}
    for g, r in q.items():
        rep = check_qdq(r["path"])  # raises unless every zero-point is int8 0
        assert sum(rep.quantized_ops.values()) > 0 and rep.per_channel_weights > 0
        s32 = ort.InferenceSession(str(graphs[g]["path"]), providers=["CPUExecutionProvider"])
        s8 = ort.InferenceSession(str(r["path"]), providers=["CPUExecutionProvider"])
        feeds = {i.name: real[g][i.name] for i in s32.get_inputs()}
        a, b = s32.run(None, feeds)[0], s8.run(None, feeds)[0]
        assert np.abs(a - b).max() < 0.1 * (np.abs(a).max() + 1e-3), g


def test_bundle_roles_and_precision_fallback(tmp_path):
    from mlsan_edge.bundle import load_bundle
    from mlsan_edge.backends.stages import Stages

    table = make_table(n_groups=4)
    model = make_model(tiny("student"), table)
    path = write_stage_bundle(tmp_path / "b", {"student": model}, GlobalStats.fit(table),
                              calibration=calibration(table), int8=("student",))
    b = load_bundle(path)
    assert {f"student.{g}.fp32" for g in ("speaker", "stage1", "stage2", "stage3")} <= set(b.roles)
    assert {f"student.{g}.int8" for g in ("speaker", "stage2", "stage3")} <= set(b.roles)
    assert "student.stage1.int8" not in b.roles
    st = Stages(path, backend="onnxruntime", precision="int8")
    assert st.precisions == {"speaker": "int8", "stage1": "fp32", "stage2": "int8", "stage3": "int8"}
    assert Stages(path, backend="onnxruntime").precisions["stage2"] == "fp32"  # auto: select.py's ORT rule
    p = st.speaker_params({k: v[0] for k, v in calibration(table)["speaker"].items() if k.startswith("profile")}, None)
    assert Stages.params_from_bytes(Stages.params_to_bytes(p)).keys() == p.keys()


def test_calibration_with_wrong_feature_shape_is_refused():
    from mlsan_edge.export.quantize import CalibrationError

    table = make_table()
    model = make_model(tiny("student"), table)
    cal = calibration(table)
    cal["stage1"]["audio"] = cal["stage1"]["audio"][:, :-1]
    with pytest.raises(CalibrationError, match="audio"):
        derive_inputs(model, cal)
