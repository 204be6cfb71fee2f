"""`smnas profile-lut`'s torch-backend options reach the backend, and misuse ends in one line with exit 2."""

from __future__ import annotations

import subprocess
import sys
import time
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



def _smnas(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(Path(sys.executable).parent / "smnas"), *args], capture_output=True, text=True,
                          timeout=timeout)


def test_a_second_writer_is_refused_while_readers_work_and_a_killed_writer_does_not_block(tmp_path: Path) -> None:
    out = tmp_path / "lut.db"
    lock = tmp_path / "lut.db.lock"
    # A writer that takes a while: torch backend (no export), many models, a long timing budget each.
    args = profile_args(out, "torch", "--threads", "1", "--budget-s", "0.3")
    args[args.index("--models") + 1] = "200"
    writer = subprocess.Popen([str(Path(sys.executable).parent / "smnas"), *args],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 90
        while not (out.exists() and lock.exists() and lock.read_text()) and time.monotonic() < deadline:
            assert writer.poll() is None, writer.stderr.read() if writer.stderr else ""
            time.sleep(0.1)
        assert f"pid {writer.pid} " in lock.read_text()
        second = _smnas(*profile_args(out, "torch", "--resume"))
        lines = second.stderr.strip().splitlines()
        assert second.returncode == 2 and len(lines) == 1, second.stderr
        assert f"{out} is being written by another process (pid {writer.pid} since" in lines[0]
        assert "profile-lut" in lines[0]
        shown = _smnas("lut", "show", str(out))  # readers do not take the lock
        assert shown.returncode == 0, shown.stderr
    finally:
        writer.kill()
        writer.wait()
    # The kernel dropped the dead writer's lock: a resume runs (and removes the lock file when done).
    resumed = _smnas(*profile_args(out, "torch", "--resume", "--threads", "1", "--budget-s", "0", "--min-runs", "1"))
    assert resumed.returncode == 0, resumed.stderr
    assert not lock.exists()
