"""`smnas profile-lut`'s torch-backend options reach the backend, and misuse ends in one line with exit 2."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from smnas_trt.cli import main


def run_main(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    """Run the real entry point (the one `smnas` calls) in-process; returns (exit code, stderr)."""
    monkeypatch.setattr(sys, "argv", ["smnas", *args])
    code = 0
    try:
        main()
    except SystemExit as e:
        code = int(e.code or 0)
    return code, capsys.readouterr().err


def profile_args(out: Path, backend: str, *extra: str) -> list[str]:
    return ["profile-lut", "--space", "tiny", "--backend", backend, "--models", "1", "--modules", "none",
            "--out", str(out), *extra]


NO_GPU = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")


@pytest.mark.parametrize(("backend", "extra", "message"), [
    pytest.param("torch", ("--device", "cuda:0"), "device cuda:0 (torch) needs a CUDA GPU", marks=NO_GPU),
    ("ort-cpu", ("--device", "cuda"), "profile-lut: backend ort-cpu runs on the cpu, not on cuda"),
    ("torch", ("--device", "gpu"), "device 'gpu' is not one of cpu, cuda, cuda:N"),
    ("torch", ("--cuda-graphs",), "cuda_graphs needs the torch backend on a CUDA device"),
    ("ort-cpu", ("--passes", "0"), "--passes must be >= 1"),
    ("ort-cpu", ("--modules", "stems"), "--modules: unknown kind 'stems'"),
    ("ort-cpu", ("--exporter", "jit"), "--exporter 'jit' is not one of legacy, dynamo"),
    ("ort-cpu", ("--anchors",), "--anchors adds anchors to an existing table: use it with --resume"),
    ("ort-cpu", ("--onnx-cache", "/proc/version/x"), "ONNX cache /proc/version/x: not a writable folder"),
])
def test_misuse_is_one_line_and_writes_nothing(
    backend: str, extra: tuple[str, ...], message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "lut.db"
    code, err = run_main(monkeypatch, capsys, *profile_args(out, backend, *extra))
    assert code == 2 and err.strip().count("\n") == 0 and message in err
    assert not out.exists()


def test_device_cpu_reaches_torch_backend(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from smnas_trt.profiling.lut import LatencyTable

    out = tmp_path / "lut.db"
    args = profile_args(out, "torch", "--device", "cpu", "--threads", "1", "--budget-s", "0", "--min-runs", "1",
                        "--passes", "2")
    code, err = run_main(monkeypatch, capsys, *args)
    assert code == 0, err
    with LatencyTable.open(out) as table:
        assert table.fingerprint.backend == "torch" and table.fingerprint.device_kind == "cpu"
        assert table.fingerprint.threads == 1
        rows = table.model_rows("network")
        assert len(rows) == 1 and len(rows[0].extra["pass_medians_ms"]) == 2

