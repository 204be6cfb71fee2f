"""TensorRT ONNX-parser readiness from the parser's published operator table, on real ONNX files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from smnas_trt.errors import ProfilingError
from smnas_trt.profiling import trt_onnx_operators as table
from smnas_trt.profiling.trt_support import check_trt_support, restricted_ops, unsupported_ops


class Body(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.norm = torch.nn.GroupNorm(2, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.norm(self.conv(x)))
        y = torch.nn.functional.max_pool2d(y, 2)
        return torch.nn.functional.interpolate(y, scale_factor=2.0, mode="nearest").flatten(1)


def test_table_is_the_published_one() -> None:
    assert len(table.SOURCE_COMMIT) == 40 and table.SOURCE_REPO == "onnx/onnx-tensorrt"
    assert len(table.OPERATORS) > 150
    assert table.OPERATORS["Conv"][0] and "FP16" in table.OPERATORS["Conv"][1]
    assert table.OPERATORS["RoiAlign"][0] and table.OPERATORS["NonMaxSuppression"][0]
    assert not table.OPERATORS["Unique"][0]
    assert "initializer" in table.OPERATORS["Slice"][2]


def test_exported_torch_body_is_supported(tmp_path: Path) -> None:
    path = tmp_path / "body.onnx"
    torch.onnx.export(Body().eval(), (torch.rand(1, 3, 16, 16),), str(path), dynamo=True, verbose=False)
    report = check_trt_support(path)
    assert report.ok and unsupported_ops(path) == []
    assert {"Conv", "MaxPool", "Resize"} <= set(report.op_counts)
    assert "MaxPool" in report.restricted and "dilations" in report.restricted["MaxPool"]
    assert "Resize" in restricted_ops(path)
    assert table.SOURCE_COMMIT[:12] in report.format()


def _graph_with_unsupported_ops(path: Path) -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])
    cond = helper.make_tensor_value_info("cond", TensorProto.BOOL, [])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [None])
    z = helper.make_tensor_value_info("z", TensorProto.FLOAT, [4])
    then_out = helper.make_tensor_value_info("t_out", TensorProto.FLOAT, [None])
    else_out = helper.make_tensor_value_info("e_out", TensorProto.FLOAT, [None])
    then_graph = helper.make_graph([helper.make_node("Unique", ["x"], ["t_out"])], "then", [], [then_out])
    else_graph = helper.make_graph([helper.make_node("Identity", ["x"], ["e_out"])], "else", [], [else_out])
    nodes = [
        helper.make_node("If", ["cond"], ["y"], then_branch=then_graph, else_branch=else_graph),
        helper.make_node("Relu", ["x"], ["r"]),
        helper.make_node("Hardmax", ["r"], ["h"]),
        helper.make_node("Reshape", ["h", "shape"], ["h2"]),
        helper.make_node("Det", ["h2"], ["d"]),
        helper.make_node("Add", ["r", "r"], ["z"]),
    ]
    shape = helper.make_tensor("shape", TensorProto.INT64, [2], np.array([2, 2]))
    graph = helper.make_graph(
        nodes, "g", [x, cond], [y, z, helper.make_tensor_value_info("d", TensorProto.FLOAT, [])], [shape]
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    onnx.save(model, path)


def test_unsupported_ops_in_graph_and_subgraph(tmp_path: Path) -> None:
    path = tmp_path / "odd.onnx"
    _graph_with_unsupported_ops(path)
    # Det and Unique (inside the If branch) are unsupported; Hardmax is supported with a restriction.
    assert unsupported_ops(path) == ["Det", "Unique"]
    assert "axis" in restricted_ops(path)["Hardmax"]
    model = onnx.load(path)
    model.graph.node.append(helper.make_node("MyPlugin", ["x"], ["p"], domain="com.example"))
    report = check_trt_support(model)
    assert report.unsupported == ["Det", "Unique", "com.example::MyPlugin"]
    assert any("plugin" in note for note in report.notes)


def test_opset_outside_table_is_noted(tmp_path: Path) -> None:
    path = tmp_path / "odd.onnx"
    _graph_with_unsupported_ops(path)
    model = onnx.load(path)
    model.opset_import[0].version = 23
    assert any("opset 23" in n for n in check_trt_support(model).notes)


def test_bad_files(tmp_path: Path) -> None:
    with pytest.raises(ProfilingError, match="not found"):
        unsupported_ops(tmp_path / "none.onnx")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\xff\xfe not onnx")
    with pytest.raises(ProfilingError, match=r"bad\.onnx"):
        unsupported_ops(bad)
