"""Will TensorRT's ONNX parser take this graph? Answered from the parser's published operator table.

Useful on a CPU-only box: before anyone builds an engine, list the operators TensorRT's ONNX parser
does not support and those it supports only with restrictions. The table is onnx-tensorrt's
`docs/operators.md`, embedded in `trt_onnx_operators.py` with the commit it came from.

This reads the table, not TensorRT: an operator marked supported can still fail on a restriction or
a data type, and plugins (e.g. custom-domain ops) are outside the table.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from smnas_trt.errors import ProfilingError
from smnas_trt.profiling import trt_onnx_operators as table

STANDARD_DOMAINS = ("", "ai.onnx")


@dataclass(frozen=True, slots=True)
class TrtSupportReport:
    """Operators of one graph checked against the parser table."""

    unsupported: list[str]  # op names (custom domains as "domain::Op") the parser cannot take
    restricted: dict[str, str]  # op -> the table's restriction note, for ops supported with conditions
    op_counts: dict[str, int]  # every op of the graph (subgraphs and local functions included)
    opset: int | None
    notes: list[str] = field(default_factory=list)
    source: str = f"{table.SOURCE_REPO} {table.SOURCE_PATH} @ {table.SOURCE_COMMIT[:12]} ({table.SOURCE_RELEASE})"

    @property
    def ok(self) -> bool:
        return not self.unsupported

    def format(self) -> str:
        lines = [f"TensorRT ONNX parser table: {self.source}"]
        lines.append("unsupported: " + (", ".join(self.unsupported) if self.unsupported else "none"))
        for op, note in sorted(self.restricted.items()):
            lines.append(f"restricted: {op}: {note}")
        lines.extend(f"note: {n}" for n in self.notes)
        return "\n".join(lines)


def _load(model_or_path: Any) -> Any:
    import onnx

    if isinstance(model_or_path, onnx.ModelProto):
        return model_or_path
    path = Path(model_or_path)
    if not path.is_file():
        raise ProfilingError(f"ONNX file not found: {path}")
    try:
        return onnx.load(str(path), load_external_data=False)
    except Exception as e:  # protobuf DecodeError and friends
        raise ProfilingError(f"{path}: not a readable ONNX model ({type(e).__name__})") from e


def _count_ops(model: Any) -> dict[tuple[str, str], int]:
    """(domain, op_type) -> count over the main graph, If/Loop/Scan subgraphs and model-local functions."""
    import onnx

    functions = {(f.domain, f.name): f for f in model.functions}
    counts: dict[tuple[str, str], int] = {}
    seen_functions: set[tuple[str, str]] = set()

    def visit(nodes: Any) -> None:
        for node in nodes:
            key = (node.domain, node.op_type)
            if key in functions:
                # A local function is expanded by the exporter's consumer; count what it calls.
                if key not in seen_functions:
                    seen_functions.add(key)
                    visit(functions[key].node)
                continue
            domain = "" if node.domain in STANDARD_DOMAINS else node.domain
            counts[(domain, node.op_type)] = counts.get((domain, node.op_type), 0) + 1
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    visit(attr.g.node)
                elif attr.type == onnx.AttributeProto.GRAPHS:
                    for g in attr.graphs:
                        visit(g.node)

    visit(model.graph.node)
    return counts


def check_trt_support(model_or_path: Any) -> TrtSupportReport:
    """Check every operator of an ONNX model (path or ModelProto) against the parser's table."""
    model = _load(model_or_path)
    counts = _count_ops(model)
    unsupported: list[str] = []
    restricted: dict[str, str] = {}
    notes: list[str] = []
    for (domain, op), _n in sorted(counts.items()):
        if domain:
            unsupported.append(f"{domain}::{op}")
            continue
        entry = table.OPERATORS.get(op)
        if entry is None or not entry[0]:
            unsupported.append(op)
        elif entry[2]:
            restricted[op] = entry[2]
    opset = next((o.version for o in model.opset_import if o.domain in STANDARD_DOMAINS), None)
    lo, hi = table.OPSET_RANGE
    if opset is not None and not lo <= opset <= hi:
        notes.append(f"graph opset {opset} is outside the table's documented range {lo}-{hi}")
    if any(d for d, _ in counts):
        notes.append("custom-domain ops need a TensorRT plugin; the parser table does not cover them")
    op_counts = {(f"{d}::{o}" if d else o): n for (d, o), n in sorted(counts.items())}
    return TrtSupportReport(unsupported, restricted, op_counts, opset, notes)


def unsupported_ops(model_or_path: Any) -> list[str]:
    """Sorted operators of the graph that TensorRT's ONNX parser does not support (per its table)."""
    return check_trt_support(model_or_path).unsupported


def restricted_ops(model_or_path: Any) -> dict[str, str]:
    """Operators of the graph supported only with restrictions, with the table's note for each."""
    return check_trt_support(model_or_path).restricted
