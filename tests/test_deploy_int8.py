"""`smnas deploy --precision int8`: a tiny model trained here, calibrated on its training images, verified
against float PyTorch with the INT8 tolerances, loaded and run; no dataset to calibrate on is one line."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import onnx
import pytest
import torch

from smnas_trt.deploy import DeployOptions, Detector, deploy_models, deploy_spec, read_manifest, target_from_checkpoint
from smnas_trt.deploy.verify import TOLERANCES
from smnas_trt.errors import DeployError
from smnas_trt.profiling.quantize import quant_metadata
from smnas_trt.profiling.timing import TimingConfig

# Two-stage: both graphs (rpn, roi) are quantized, each on the inputs the float pipeline gives it.
ARCH = "64x64/r18_16_11-21-21-21/fpn:P3-P5:16/rpn/2fc:32"
QUICK = TimingConfig(warmup_runs=1, warmup_s=0.0, min_runs=3, max_runs=5, budget_s=0.0)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from smnas_trt.data import generate_demo
    from smnas_trt.training import TrainConfig, train_arch

    root = tmp_path_factory.mktemp("int8")
    data = generate_demo(root / "data", n_train=8, n_val=3, size=96, seed=0)
    torch.manual_seed(0)
    result = train_arch(ARCH, data, root / "train", TrainConfig(epochs=1, batch_size=4, warmup_iters=1,
                                                                  progress=False))
    return data, result.checkpoint


def _deploy(trained: tuple[Path, Path], out: Path, **kw: object) -> Path:
    data, ckpt = trained
    target = target_from_checkpoint(ckpt, data)
    options = DeployOptions(out=out, spec=deploy_spec("ort-cpu", "int8", threads=1), verify_images=3, timing=QUICK,
                            **kw)  # type: ignore[arg-type]
    result = deploy_models([target], options)
    assert not result.failed, result.models[0].error or result.models[0].manifest
    return out / target.arch_id


def test_int8_deploy_calibrates_verifies_and_runs(trained: tuple[Path, Path], tmp_path: Path) -> None:
    folder = _deploy(trained, tmp_path / "a", calibration_images=5, seed=3)
    manifest = read_manifest(folder)
    assert manifest.precision == "int8" and manifest.status == "ok"
    calibration = manifest.calibration
    assert calibration is not None
    assert calibration["images"] == 5 and calibration["available"] == 8 and calibration["seed"] == 3
    assert calibration["split"] == "train" and calibration["scheme"] == "u8s8" and calibration["method"] == "minmax"
    assert set(calibration["qdq_nodes"]) == {"rpn", "roi"} and all(calibration["qdq_nodes"].values())
    verification = manifest.verification
    assert verification.precision == "int8" and verification.tolerance == TOLERANCES["int8"].to_dict()
    for graph in manifest.graphs:  # the shipped graphs are the QDQ graphs
        model = onnx.load(str(folder / str(graph.onnx)))
        assert any(n.op_type == "QuantizeLinear" for n in model.graph.node)
        assert quant_metadata(folder / str(graph.onnx))["scheme"] == "u8s8"
    with Detector.load(folder) as detector:
        pixels = torch.rand(3, 64, 64)
        dets = detector.detect_prepared(detector.normalise(pixels))
        assert set(dets) >= {"boxes", "scores", "labels"}
    # Same seed, same images: the same graphs, byte for byte; the manifest's hashes say so.
    again = read_manifest(_deploy(trained, tmp_path / "b", calibration_images=5, seed=3))
    assert {k: v.sha256 for k, v in again.files.items()} == {k: v.sha256 for k, v in manifest.files.items()}


def test_int8_without_training_images_is_refused_and_writes_nothing(trained: tuple[Path, Path],
                                                                     tmp_path: Path) -> None:
    data, ckpt = trained
    no_train = tmp_path / "val_only"
    shutil.copytree(data, no_train, ignore=shutil.ignore_patterns("train", "instances_train.json"))
    target = target_from_checkpoint(ckpt, no_train)
    out = tmp_path / "out"
    with pytest.raises(DeployError) as caught:
        deploy_models([target], DeployOptions(out=out, spec=deploy_spec("ort-cpu", "int8", threads=1)))
    assert "\n" not in str(caught.value) and "--precision int8 calibrates on the 'train' images" in str(caught.value)
    assert not out.exists()
    with pytest.raises(DeployError, match="--calibration-images must be >= 1"):
        deploy_models([target_from_checkpoint(ckpt, data)],
                      DeployOptions(out=out, spec=deploy_spec("ort-cpu", "int8", threads=1), calibration_images=0))
    assert not out.exists()


@pytest.mark.parametrize(("args", "message"), [
    (("--precision", "int8", "--backend", "torch"), "int8 runs quantized (QDQ) ONNX graphs"),
    (("--precision", "int3"), "precision: Input should be 'fp32', 'fp16' or 'int8'"),
    (("--precision", "int8", "--calibration-method", "entropy"),
     "--calibration-method 'entropy' is not one of minmax, percentile"),
])
def test_cli_bad_precision_is_one_line(trained: tuple[Path, Path], tmp_path: Path, args: tuple[str, ...],
                                       message: str, monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    from smnas_trt.cli import main

    data, ckpt = trained
    out = tmp_path / "out"
    monkeypatch.setattr(sys, "argv", ["smnas", "deploy", "--checkpoint", str(ckpt), "--data", str(data), "--out",
                                      str(out), *args])
    with pytest.raises(SystemExit) as exited:
        main()
    err = capsys.readouterr().err
    assert exited.value.code == 2 and err.strip().count("\n") == 0 and message in err, err
    assert not out.exists()


def test_cli_int8_without_dataset_is_one_line(trained: tuple[Path, Path], tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    from smnas_trt.cli import main

    _, ckpt = trained
    out = tmp_path / "out"
    monkeypatch.setattr(sys, "argv", ["smnas", "deploy", "--checkpoint", str(ckpt), "--precision", "int8", "--out",
                                      str(out)])
    with pytest.raises(SystemExit) as exited:
        main()
    err = capsys.readouterr().err
    assert exited.value.code == 2 and err.strip().count("\n") == 0 and "no dataset" in err, err
    assert not out.exists()


def test_deployed_ap_equals_a_direct_pycocotools_evaluation(trained: tuple[Path, Path], tmp_path: Path) -> None:
    import contextlib
    import io

    from pycocotools.cocoeval import COCOeval

    from smnas_trt.data import CocoDetection
    from smnas_trt.deploy.score import deployed_detections

    data, _ = trained
    folder = _deploy(trained, tmp_path / "s", calibration_images=8)
    manifest = read_manifest(folder)
    accuracy = manifest.accuracy
    assert accuracy is not None and accuracy.split == "val" and accuracy.images == 3
    assert accuracy.delta_ap == pytest.approx(accuracy.deployed.ap - accuracy.pytorch.ap)
    dataset = CocoDetection(data, "val", (64, 64))
    with Detector.load(folder) as detector:
        detections = deployed_detections(detector, dataset)
    assert len(detections) == accuracy.detections["deployed"]
    with contextlib.redirect_stdout(io.StringIO()):
        coco_eval = COCOeval(dataset.coco, dataset.coco.loadRes(detections), "bbox")
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    assert accuracy.deployed.ap == pytest.approx(float(coco_eval.stats[0]), abs=1e-9)
    assert accuracy.deployed.ap50 == pytest.approx(float(coco_eval.stats[1]), abs=1e-9)
    index = (tmp_path / "s" / "models.md").read_text()
    assert "| AP (deployed) | ΔAP |" in index and f"{accuracy.delta_ap:+.3f}" in index


def test_cli_compare_fp32_int8_writes_one_table(trained: tuple[Path, Path], tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    import statistics

    from smnas_trt.cli import main
    from smnas_trt.deploy.compare import side_by_side

    data, ckpt = trained
    out = tmp_path / "cmp"
    monkeypatch.setattr(sys, "argv", ["smnas", "deploy", "--checkpoint", str(ckpt), "--data", str(data), "--out",
                                      str(out), "--compare", "fp32,int8", "--calibration-images", "4",
                                      "--verify-images", "2", "--quick"])
    try:
        main()
    except SystemExit as e:
        assert not e.code
    report = json.loads((out / "compare.json").read_text())
    assert [r["precision"] for r in report["rows"]] == ["fp32", "int8"]
    fp32, int8 = report["rows"]
    assert fp32["delta_ap"] == 0.0 and fp32["speedup"] == 1.0
    assert int8["delta_ap"] == pytest.approx(int8["ap"] - fp32["ap"]) and int8["speedup"] > 0
    assert fp32["speedup_side_by_side"] == 1.0  # its own rounds against themselves
    assert 0 < int8["speedup_side_by_side_p10"] <= int8["speedup_side_by_side"] <= int8["speedup_side_by_side_p90"]
    assert read_manifest(out / "int8" / int8["arch_id"]).precision == "int8"
    table = (out / "compare.md").read_text()
    assert "| AP (deployed) | ΔAP |" in table and "| speed-up side by side |" in table
    assert f"{int8['speedup_side_by_side']:.2f}x ({int8['speedup_side_by_side_p10']:.2f}x-" in table
    # The side-by-side rounds time the networks the deploys timed: one figure per round, near their own timing.
    rounds = side_by_side({"fp32": out / "fp32" / fp32["arch_id"], "int8": out / "int8" / int8["arch_id"]}, 5)
    assert {p: len(t) for p, t in rounds.items()} == {"fp32": 5, "int8": 5}
    for precision, row in (("fp32", fp32), ("int8", int8)):
        assert all(t > 0 for t in rounds[precision])
        assert 0.3 < statistics.median(rounds[precision]) / row["network_ms"] < 3, (precision, rounds, row)


def test_compare_needs_two_precisions() -> None:
    from smnas_trt.deploy.compare import parse_precisions

    with pytest.raises(DeployError, match="two or more different precisions"):
        parse_precisions("int8", "ort-cpu")
    with pytest.raises(DeployError, match="int8 runs quantized"):
        parse_precisions("fp32,int8", "torch")
