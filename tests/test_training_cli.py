"""`smnas data demo`, `smnas train`, `smnas eval` end to end on a few generated images."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from smnas_trt.cli import app
from smnas_trt.training import TrainingError, evaluate_checkpoint, load_checkpoint

TINY_ARCH = "128x128/r18_16_11-21-21-21/fpn:P3-P6:32/none/fcos:1x32"


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "demo"
    result = CliRunner().invoke(app, ["data", "demo", "--out", str(out), "--train", "4", "--val", "2",
                                      "--size", "128", "--seed", "1"])
    assert result.exit_code == 0, result.output
    return out


def test_data_demo_command_writes_coco_layout(demo: Path) -> None:
    assert len(list((demo / "train").glob("*.png"))) == 4 and len(list((demo / "val").glob("*.png"))) == 2
    meta = json.loads((demo / "demo.json").read_text())
    assert (meta["n_train"], meta["n_val"], meta["size"], meta["seed"]) == (4, 2, 128, 1)


def test_train_then_eval_commands(demo: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    run = tmp_path / "run"
    result = runner.invoke(app, ["train", "--arch", TINY_ARCH, "--data", str(demo), "--epochs", "2",
                                 "--out", str(run), "--batch-size", "2", "--threads", "1", "--warmup-iters", "2"])
    assert result.exit_code == 0, result.output
    assert "epoch 2:" in result.output and "AP50" in result.output
    ckpt = load_checkpoint(run / "last.pt")
    assert ckpt["epoch"] == 2 and ckpt["meta"]["arch"] == TINY_ARCH and ckpt["meta"]["num_classes"] == 11
    assert set(json.loads((run / "eval.json").read_text())["metrics"]) >= {"AP", "AP50", "AP75", "APs", "APm", "APl"}

    out = tmp_path / "m.json"
    result = runner.invoke(app, ["eval", "--checkpoint", str(run / "last.pt"), "--data", str(demo),
                                 "--split", "train", "--out", str(out)])
    assert result.exit_code == 0, result.output
    metrics = json.loads(out.read_text())["metrics"]
    assert f"AP {metrics['AP']:.3f}" in result.output
    assert json.loads(out.read_text())["images"] == 4

    # A dataset with other categories is refused instead of scored against the wrong ids.
    other = tmp_path / "other"
    other.mkdir()
    (other / "val").symlink_to(demo / "val")
    data = json.loads((demo / "instances_val.json").read_text())
    data["categories"] = data["categories"][:9]
    data["annotations"] = [a for a in data["annotations"] if a["category_id"] <= 9]
    (other / "instances_val.json").write_text(json.dumps(data))
    with pytest.raises(TrainingError, match="trained on categories"):
        evaluate_checkpoint(run / "last.pt", other)


def test_cli_errors_are_one_line(demo: Path, tmp_path: Path) -> None:
    smnas = Path(sys.executable).parent / "smnas"
    proc = subprocess.run([str(smnas), "eval", "--checkpoint", str(tmp_path / "none.pt"), "--data", str(demo)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "checkpoint not found" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_train_refuses_a_split_without_usable_boxes(demo: Path, tmp_path: Path) -> None:
    """Every box rejected: one line naming the file and the counts, exit 2, never a training to AP 0."""
    bad = tmp_path / "bad"
    shutil.copytree(demo, bad)
    ann = bad / "instances_train.json"
    data = json.loads(ann.read_text())
    for a in data["annotations"]:
        a["bbox"][2] = -a["bbox"][2]  # negative width
    data["annotations"][0]["bbox"][1] = float("nan")
    ann.write_text(json.dumps(data))
    n = len(data["annotations"])
    smnas = Path(sys.executable).parent / "smnas"
    proc = subprocess.run([str(smnas), "train", "--arch", TINY_ARCH, "--data", str(bad), "--epochs", "1",
                           "--out", str(tmp_path / "run")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"error: {ann}: no usable box: 1 non-finite, {n - 1} with negative width or height"]
    assert not (tmp_path / "run" / "last.pt").exists()
