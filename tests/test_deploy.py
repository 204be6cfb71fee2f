"""Deploy: a tiny model trained here, deployed on ort-cpu and torch, verified, loaded, run; bad input refused."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from smnas_trt.deploy import (
    MANIFEST,
    DeployOptions,
    DeployTarget,
    Detector,
    Verification,
    check_files,
    deploy_models,
    deploy_spec,
    match_detections,
    read_manifest,
    sha256_file,
    target_from_checkpoint,
    targets_from_run,
)
from smnas_trt.deploy.manifest import write_manifest
from smnas_trt.deploy.verify import TOLERANCES, Tolerance
from smnas_trt.errors import DeployError
from smnas_trt.profiling.timing import TimingConfig

# Two-stage: the deployed pipeline has both graphs, the RPN's NMS and RoIHeads' post-processing.
ARCH = "64x64/r18_16_11-21-21-21/fpn:P3-P5:16/rpn/2fc:32"
QUICK = TimingConfig(warmup_runs=1, warmup_s=0.0, min_runs=3, max_runs=5, budget_s=0.0)




@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(dataset folder, checkpoint) of ARCH trained for one epoch on a few generated images."""
    from smnas_trt.data import generate_demo
    from smnas_trt.training import TrainConfig, train_arch

    root = tmp_path_factory.mktemp("deploy")
    data = generate_demo(root / "data", n_train=8, n_val=3, size=96, seed=0)
    torch.manual_seed(0)
    result = train_arch(ARCH, data, root / "train", TrainConfig(epochs=1, batch_size=4, warmup_iters=1,
                                                                  progress=False))
    return data, result.checkpoint


@pytest.fixture(scope="module")
def deployed(trained: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ARCH deployed on ort-cpu; returns its model folder."""
    data, ckpt = trained
    out = tmp_path_factory.mktemp("out") / "deployed"
    target = target_from_checkpoint(ckpt, data, ap=0.01, ap50=0.02)
    result = deploy_models([target], DeployOptions(out=out, spec=deploy_spec("ort-cpu", threads=1), verify_images=3,
                                                   timing=QUICK))
    assert not result.failed, result.models[0].error
    return out / target.arch_id


# ---------------------------------------------------------------------------------------------- matching
def _dets(boxes: list[list[float]], scores: list[float], labels: list[int]) -> dict[str, torch.Tensor]:
    return {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), "scores": torch.tensor(scores),
            "labels": torch.tensor(labels, dtype=torch.int64)}


def test_matching_identical_shifted_and_relabelled() -> None:
    tol = TOLERANCES["fp32"]
    ref = _dets([[0, 0, 10, 10], [20, 20, 40, 40], [5, 5, 30, 30]], [0.9, 0.8, 0.7], [1, 2, 1])
    same = match_detections(ref, ref, tol)
    assert (same.matched, same.matched_099, same.borderline) == (3, 3, 0)
    # One box moved by 1 px (IoU ~0.82), one relabelled: neither counts as matched.
    test = _dets([[1, 0, 11, 10], [20, 20, 40, 40], [5, 5, 30, 30]], [0.9, 0.8, 0.7], [1, 3, 1])
    m = match_detections(ref, test, tol)
    assert m.matched == 1
    v = Verification("fp32", tol)
    v.add(m)
    assert v.match_share == pytest.approx(1 / 3)
    assert not v.passed and "matched" in v.failures()[0]


def test_zero_area_boxes_match_by_coordinates() -> None:
    tol = TOLERANCES["fp32"]
    ref = _dets([[63.6995, 112, 64.5179, 112], [80, 96, 80, 99.78]], [0.0968, 0.0945], [6, 2])  # IoU undefined
    m = match_detections(ref, _dets([[63.6994, 112, 64.5178, 112], [80, 96, 80, 99.78]], [0.0968, 0.0945], [6, 2]),
                         tol)
    assert m.matched == 2
    moved = match_detections(ref, _dets([[63.6995, 112, 64.5179, 112], [80, 96, 80, 101]], [0.0968, 0.0945], [6, 2]),
                             tol)
    assert moved.matched == 1


def test_matching_tolerates_one_sided_boxes_at_the_score_cutoff() -> None:
    tol = TOLERANCES["fp32"]
    ref = _dets([[0, 0, 10, 10], [20, 20, 40, 40]], [0.9, 0.0502], [1, 1])
    test = _dets([[0, 0, 10, 10]], [0.9000001], [1])  # the 0.0502 box fell just under 0.05 on this side
    v = Verification("fp32", tol)
    v.add(match_detections(ref, test, tol, score_thresh=0.05))
    assert v.borderline == 1 and v.compared == 1 and v.passed
    high = _dets([[0, 0, 10, 10], [20, 20, 40, 40]], [0.9, 0.6], [1, 1])  # a confident box missing: a failure
    v = Verification("fp32", tol)
    v.add(match_detections(high, test, tol, score_thresh=0.05))
    assert v.borderline == 0 and not v.passed


def test_output_difference_fails_beyond_tolerance() -> None:
    v = Verification("fp32", TOLERANCES["fp32"])
    assert not v.passed and v.failures() == ["no images were compared"]
    same = _dets([[0, 0, 10, 10]], [0.9], [1])
    v.add(match_detections(same, same, v.tolerance))
    v.add_outputs("body.cls", np.ones(4) + 1e-7, np.ones(4))
    assert v.passed
    v.add_outputs("body.box", np.array([1.0, 2.0]), np.array([1.0, 2.1]))
    assert not v.passed and "body.box" in v.failures()[0]


# ---------------------------------------------------------------------------------------------- deploy
def test_deploy_ort_cpu_manifest_hashes_and_verification(deployed: Path) -> None:
    m = read_manifest(deployed)
    assert m.status == "ok" and m.backend == "ort-cpu" and m.precision == "fp32"
    assert m.arch == ARCH and m.ap == 0.01 and m.ap50 == 0.02
    assert [g.name for g in m.graphs] == ["rpn", "roi"]
    assert set(m.files) == {"rpn.onnx", "roi.onnx"}
    for name, entry in m.files.items():
        assert sha256_file(deployed / name) == entry.sha256
        assert (deployed / name).stat().st_size == entry.bytes
    check_files(deployed, m)
    ver = m.verification
    assert ver.passed and ver.images == 3  # a figure kept as written (extra key)
    assert ver.compared and ver.match_share_iou_0_99 and ver.max_score_diff is not None
    assert ver.compared > 0 and ver.match_share_iou_0_99 >= 0.99 and ver.max_score_diff < 1e-3
    assert set(ver.output_rel_diff) >= {"rpn.objectness", "roi.class_logits"}
    lat = m.latency
    assert lat.network and lat.end2end and set(lat.network.graphs) == {"rpn", "roi"}
    assert lat.network.median_ms > 0 and lat.end2end.median_ms > 0
    assert m.fingerprint["backend"] == "ort-cpu" and m.fingerprint["threads"] == 1
    assert m.classes.label_to_cat == list(range(11))
    index = json.loads((deployed.parent / "models.json").read_text())["models"]
    assert [r["arch_id"] for r in index] == [m.arch_id]
    assert m.arch_id in (deployed.parent / "models.md").read_text()


def test_runtime_predict_matches_pytorch_in_original_pixels(deployed: Path, trained: tuple[Path, Path]) -> None:
    from smnas_trt.training import load_trained

    data, ckpt = trained
    image_path = data / "val" / "000001.png"
    with Image.open(image_path) as im:
        image = im.convert("RGB")
    with Detector.load(deployed, threads=1) as det:
        boxes, scores, labels = det.predict(image_path)
        assert det.input_size == (64, 64)
        for same_image in (image, np.asarray(image)):  # PIL image, HxWx3 uint8 array
            np.testing.assert_array_equal(det.predict(same_image).boxes, boxes)
    model, _ = load_trained(ckpt)
    model.roi_heads.score_thresh = 0.05
    pixels = torch.from_numpy(np.array(image.resize((64, 64), Image.BILINEAR))).permute(2, 0, 1).float() / 255
    with torch.no_grad():
        ref = model([pixels])[0]
    assert len(boxes) == len(ref["boxes"]) > 0
    scale = np.array([96 / 64, 96 / 64] * 2, dtype=np.float32)  # 96 px image, 64 px input
    np.testing.assert_allclose(boxes, ref["boxes"].numpy() * scale, atol=1e-3)
    np.testing.assert_allclose(scores, ref["scores"].numpy(), atol=1e-5)
    assert (labels == ref["labels"].numpy()).all()  # demo categories 1..10 are labels 1..10


def test_agnostic_nms_keeps_one_box_per_object(deployed: Path, trained: tuple[Path, Path]) -> None:
    from torchvision.ops import box_iou

    data, _ = trained
    with Detector.load(deployed, threads=1) as det:
        thresh = det.decoder.nms_thresh
        per_class = det.predict(data / "val" / "000001.png")
        agnostic = det.predict(data / "val" / "000001.png", agnostic_nms=True)
    boxes, scores = torch.from_numpy(per_class.boxes), torch.from_numpy(per_class.scores)
    iou = box_iou(boxes, boxes)
    crossing = (iou > thresh) & torch.from_numpy(per_class.labels[:, None] != per_class.labels[None, :])
    assert crossing.any()  # the barely trained model's runner-up classes sit on the same boxes
    kept = {tuple(b) for b in agnostic.boxes.tolist()}
    assert kept <= {tuple(b) for b in per_class.boxes.tolist()} and len(kept) < len(per_class.boxes)
    k = torch.tensor([tuple(b) in kept for b in per_class.boxes.tolist()])
    kept_iou = iou[k][:, k]
    assert (kept_iou.fill_diagonal_(0) <= thresh).all()  # no two kept boxes overlap above the threshold
    for i in torch.nonzero(~k).flatten().tolist():  # each dropped box sits under a kept, higher-scored one
        assert ((iou[i] > thresh) & k & (scores >= scores[i])).any()


def test_deploy_torch_backend(trained: tuple[Path, Path], tmp_path: Path) -> None:
    data, ckpt = trained
    target = target_from_checkpoint(ckpt, data)
    result = deploy_models([target], DeployOptions(out=tmp_path, spec=deploy_spec("torch", threads=1), verify_images=2,
                                                   timing=QUICK))
    assert not result.failed
    folder = tmp_path / target.arch_id
    m = read_manifest(folder)
    assert m.status == "ok" and set(m.files) == {"weights.pt"} and m.verification.passed
    assert m.verification.compared
    with Detector.load(folder, threads=1) as det:
        assert len(det.predict(data / "val" / "000002.png").boxes) > 0


def test_corrupted_model_file_is_detected_on_load(deployed: Path, tmp_path: Path) -> None:
    copy = tmp_path / "model"
    shutil.copytree(deployed, copy)
    onnx_file = copy / "roi.onnx"
    raw = bytearray(onnx_file.read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # same size, one byte flipped
    onnx_file.write_bytes(bytes(raw))
    with pytest.raises(DeployError, match=r"roi\.onnx: corrupted model file \(SHA-256"):
        Detector.load(copy)
    onnx_file.write_bytes(bytes(raw[:100]))  # truncated
    with pytest.raises(DeployError, match="corrupted model file"):
        Detector.load(copy)
    (copy / MANIFEST).unlink()
    with pytest.raises(DeployError, match="not a deployed model"):
        Detector.load(copy)


def test_failed_verification_is_recorded_and_refused_on_load(trained: tuple[Path, Path], tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    import smnas_trt.deploy.deployer as deployer

    impossible = Tolerance(match_iou=0.99, min_match_share=1.0, max_score_diff=0.0, max_output_rel_diff=-1.0,
                           borderline=0.0, box_atol=0.0)
    monkeypatch.setattr(deployer, "tolerance_for", lambda precision: impossible)
    data, ckpt = trained
    target = target_from_checkpoint(ckpt, data)
    result = deploy_models([target], DeployOptions(out=tmp_path, spec=deploy_spec("torch", threads=1), verify_images=1,
                                                   timing=QUICK))
    assert [m.arch_id for m in result.failed] == [target.arch_id]
    m = read_manifest(tmp_path / target.arch_id)
    assert m.status == "failed" and not m.verification.passed and m.verification.failures
    with pytest.raises(DeployError, match="failed verification"):
        Detector.load(tmp_path / target.arch_id)
    Detector.load(tmp_path / target.arch_id, allow_failed=True).close()


def test_predict_cli_writes_boxes_json_and_images(deployed: Path, trained: tuple[Path, Path], tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from smnas_trt.cli import app

    data, _ = trained
    out = tmp_path / "pred"
    result = CliRunner().invoke(app, ["predict", "--model", str(deployed), str(data / "val" / "000001.png"),
                                      str(data / "val"), "--out", str(out), "--min-score", "0.05", "--threads", "1"])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "detections.json").read_text())
    assert report["model"]["arch"] == ARCH and len(report["images"]) == 4  # the file, then the folder's 3
    first = report["images"][0]
    assert first["width"] == 96 and first["detections"]
    for d in first["detections"]:
        x1, y1, x2, y2 = d["bbox_xyxy"]
        assert 0 <= x1 < x2 <= 96 and 0 <= y1 < y2 <= 96 and d["score"] >= 0.05
        assert d["name"] == str(d["category_id"] - 1)  # demo category k is the digit k - 1
    drawn = Image.open(out / first["drawn"])
    assert drawn.size == (96, 96)
    original = np.asarray(Image.open(data / "val" / "000001.png").convert("RGB"))
    assert (np.asarray(drawn.convert("RGB")) != original).any()  # boxes were drawn
    assert sorted(p.name for p in out.glob("*.png")) == ["000001.png", "000001_1.png", "000002.png", "000003.png"]


# ---------------------------------------------------------------------------------------------- bad input
def _run_dir(root: Path, data: Path, ckpt: Path | None, on_front: bool) -> Path:
    """A real run directory (frozen config + SQLite run store) holding one trained candidate."""
    from smnas_trt.search import STORE_FILE, RunStore, load_search_config
    from smnas_trt.space import parse

    run = root / "run"
    run.mkdir()
    config = load_search_config("demo", {"data": str(data), "latency.lut": str(root / "lut.db")})
    (run / "config.yaml").write_text(config.to_yaml())
    store = RunStore(run / STORE_FILE)
    arch = parse(ARCH)
    store.add_candidate(arch.id, ARCH, "structural", 0, None, 5.0, 0.5)
    if ckpt is not None:
        store.update(arch.id, status="done", ap=0.1, ap50=0.2, measured_ms=6.0, checkpoint=str(ckpt))
    if on_front:
        store.set_front([arch.id])
    store.close()
    return run


def test_targets_from_run_front_and_arch_id(trained: tuple[Path, Path], tmp_path: Path) -> None:
    data, ckpt = trained
    run = _run_dir(tmp_path, data, ckpt, on_front=True)
    (target,) = targets_from_run(run)
    assert target.arch == ARCH and target.checkpoint == ckpt and target.ap == 0.1
    assert target.search is not None and target.search["predicted_ms"] == 5.0 and target.search["scope"] == "network"
    (by_prefix,) = targets_from_run(run, [target.arch_id[:6]])
    assert by_prefix.arch_id == target.arch_id
    with pytest.raises(DeployError, match="'ffffffffff' is not in the run"):
        targets_from_run(run, ["ffffffffff"])


def test_run_without_a_front_is_refused(trained: tuple[Path, Path], tmp_path: Path) -> None:
    data, _ = trained
    run = _run_dir(tmp_path, data, None, on_front=False)
    with pytest.raises(DeployError, match="no Pareto front"):
        targets_from_run(run)
    with pytest.raises(DeployError, match="not a search run directory"):
        targets_from_run(tmp_path)


def test_fp16_on_ort_cpu_and_unknown_backend_are_refused(tmp_path: Path) -> None:
    target = DeployTarget("x", "x", tmp_path / "none.pt", tmp_path)
    with pytest.raises(DeployError, match=r"deploy: precision fp16 needs a GPU backend .ort-cpu on the cpu"):
        deploy_spec("ort-cpu", "fp16")
    with pytest.raises(DeployError, match=r"precision fp16 needs a GPU backend .torch on the cpu"):
        deploy_spec("torch", "fp16")
    with pytest.raises(DeployError, match="deploy: backend: Input should be 'ort-cpu', 'ort-cuda', 'torch' or"):
        deploy_spec("onnx")
    with pytest.raises(DeployError, match=r"int8 runs quantized .QDQ. ONNX graphs"):
        deploy_spec("torch", "int8")
    del target


def test_existing_output_folder_is_refused_unless_overwrite(deployed: Path, trained: tuple[Path, Path]) -> None:
    data, ckpt = trained
    target = target_from_checkpoint(ckpt, data)
    before = (deployed / MANIFEST).read_bytes()
    with pytest.raises(DeployError, match="exists; pass --overwrite"):
        deploy_models([target], DeployOptions(out=deployed.parent, spec=deploy_spec("ort-cpu", threads=1)))
    assert (deployed / MANIFEST).read_bytes() == before


def test_deploy_cli_from_a_run(trained: tuple[Path, Path], tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from smnas_trt.cli import app

    data, ckpt = trained
    run = _run_dir(tmp_path, data, ckpt, on_front=True)
    out = tmp_path / "cli_out"
    args = ["deploy", "--run", str(run), "--front", "--backend", "torch", "--out", str(out), "--quick",
            "--verify-images", "1", "--threads", "1"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    arch_id = targets_from_run(run)[0].arch_id
    for stage in ("checkpoint", "weights", "verify", "latency", "saved", "smnas predict --model"):
        assert stage in result.output
    search = read_manifest(out / arch_id).latency.search
    assert search and search.backend_spec and search.backend_spec.backend == "ort-cpu"
    assert search.comparable is False  # another backend
    again = CliRunner().invoke(app, args)  # the model folder exists now
    assert isinstance(again.exception, DeployError) and "--overwrite" in str(again.exception)


def test_cli_bad_input_is_one_line_and_exit_2(tmp_path: Path) -> None:
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", "from smnas_trt.cli import main; main()", "deploy", "--checkpoint",
                           str(tmp_path / "x.pt"), "--data", str(tmp_path), "--precision", "fp16"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "precision fp16 needs a GPU backend" in lines[0]  # refused before the checkpoint


@pytest.mark.tensorrt
def test_tensorrt_deploy_fp16(trained: tuple[Path, Path], tmp_path: Path) -> None:
    """The TensorRT path end to end; skips where TensorRT or a GPU is missing (never faked)."""
    pytest.importorskip("tensorrt")
    if not torch.cuda.is_available():
        pytest.skip("TensorRT needs a CUDA GPU")
    data, ckpt = trained
    target = target_from_checkpoint(ckpt, data)
    result = deploy_models([target], DeployOptions(out=tmp_path, spec=deploy_spec("tensorrt", "fp16"),
                                                   verify_images=3))
    assert not result.failed, result.models[0].error or result.models[0].manifest
    folder = tmp_path / target.arch_id
    m = read_manifest(folder)
    assert {g.engine for g in m.graphs} == {"rpn.engine", "roi.engine"}
    assert m.verification.passed and m.fingerprint["device_kind"] == "cuda"
    with Detector.load(folder) as det:
        assert len(det.predict(data / "val" / "000001.png").boxes) > 0


@pytest.mark.parametrize("arch_text", ["64x64/r18_16_11-21-21-21/fpn:P3-P5:16/none/fcos:1x16", ARCH,
                                       "64x64/r18_16_11-21-21-21/fpn:P3-P5:16/rpn/cascade2:32"])
def test_deploy_ships_the_graphs_profile_lut_times(arch_text: str, trained: tuple[Path, Path],
                                                   tmp_path: Path) -> None:
    """One-stage, two-stage and cascade: with the same weights, the ONNX files `smnas deploy` writes are the
    very files the profiler's timing jobs export (same SHA-256), and they give the same outputs."""
    from smnas_trt.models.graphs import detector_graphs
    from smnas_trt.profiling.cache import OnnxCache
    from smnas_trt.profiling.export import DEFAULT_EXPORTER
    from smnas_trt.training import TrainConfig, load_trained, train_arch

    data, ckpt = trained
    if arch_text != ARCH:
        torch.manual_seed(1)
        ckpt = train_arch(arch_text, data, tmp_path / "train", TrainConfig(epochs=1, batch_size=4, warmup_iters=1,
                                                                            progress=False)).checkpoint
    target = target_from_checkpoint(ckpt, data)
    result = deploy_models([target], DeployOptions(out=tmp_path / "out", spec=deploy_spec("ort-cpu", threads=1),
                                                   verify_images=1, timing=QUICK))
    assert not result.failed, result.models[0].error
    manifest = read_manifest(tmp_path / "out" / target.arch_id)
    model, _ = load_trained(ckpt)
    graphs = detector_graphs(model, model.arch)
    backend = deploy_spec("ort-cpu", threads=1).build()
    with OnnxCache(tmp_path / "cache") as cache:
        for graph in graphs:  # exactly what profile-lut's and the search's timing jobs export
            info = cache.export(f"test|{graph.name}", graph.module, graph.example_inputs, exporter=DEFAULT_EXPORTER,
                                precision="fp32", input_names=graph.input_names, output_names=graph.output_names)
            shipped = tmp_path / "out" / target.arch_id / f"{graph.name}.onnx"
            assert manifest.files[shipped.name].sha256 == info.sha256 == sha256_file(shipped)
            feeds = {n: t.numpy() for n, t in zip(graph.input_names, graph.example_inputs, strict=True)}
            with backend.load(info.path) as timed, backend.load(shipped) as deployed_runner:
                for a, b in zip(timed.run(feeds), deployed_runner.run(feeds), strict=True):
                    np.testing.assert_array_equal(a, b)
    assert [g.name for g in manifest.graphs] == [g.name for g in graphs]


DATA = Path(__file__).parent / "data"


@pytest.mark.parametrize("name", ["manifest_v1_scored.json", "manifest_v1_from_run.json"])
def test_manifests_written_before_the_schema_read_and_write_back_unchanged(name: str, tmp_path: Path) -> None:
    """Manifests the dict-based writer wrote (ort-cpu, scored; from a search run) load, and writing the model
    back gives the very same file: files on disk keep their keys and shape."""
    old = tmp_path / "old"
    old.mkdir()
    shutil.copy(DATA / name, old / MANIFEST)
    m = read_manifest(old)
    assert m.status == "ok" and m.backend == "ort-cpu" and [g.name for g in m.graphs] == ["rpn", "roi"]
    assert m.latency.network and m.latency.network.median_ms > 0 and m.verification.match_share_iou_0_99 == 1.0
    if m.accuracy is not None:
        assert m.accuracy.delta_ap == 0.0
    else:
        assert m.latency.search and m.latency.search.comparable and m.latency.network.predicted_ms == 5.0
    new = tmp_path / "new"
    new.mkdir()
    write_manifest(new, m)
    assert (new / MANIFEST).read_text() == (old / MANIFEST).read_text()


# Found by tests/test_fuzz_inputs.py (Hypothesis): each made read_manifest, check_files or the index raise
# ValueError, TypeError, KeyError, AttributeError or OverflowError instead of a one-line DeployError.
# `f` is the name of the model's first file (`{f}` in a message).
@pytest.mark.parametrize(("edit", "message"), [
    (lambda m, f: m.update(version="abc"), "manifest version 'abc', this smnas reads 1"),
    (lambda m, f: m.update(files=5), "damaged manifest (files: Input should be a valid dictionary)"),
    (lambda m, f: m.update(files={}), "files: Dictionary should have at least 1 item"),
    (lambda m, f: m["files"].update({f: 5}), "files.{f}: Input should be a valid dictionary"),
    (lambda m, f: m["files"][f].pop("sha256"), "files.{f}.sha256: Field required"),
    (lambda m, f: m["files"][f].pop("bytes"), "files.{f}.bytes: Field required"),
    (lambda m, f: m["files"][f].update(bytes=True), "files.{f}.bytes: Input should be a valid integer"),
    (lambda m, f: m["files"][f].update(sha256="ab"), "files.{f}.sha256: String should match pattern"),
    (lambda m, f: m["files"].update({"../x": m["files"].pop(f)}), "file name '../x' is not a plain name"),
    (lambda m, f: m.update(latency=5), "latency: Input should be a valid dictionary"),
    (lambda m, f: m["latency"].update(network=5), "latency.network: Input should be a valid dictionary"),
    (lambda m, f: m["latency"]["network"].update(median_ms="fast"), "latency.network.median_ms: Input should be a "
                                                                    "valid number"),
    (lambda m, f: m.update(ap=[1]), "ap: Input should be a valid number"),
    (lambda m, f: m.update(ap=10**400), "ap: Input should be a valid number"),
    (lambda m, f: m.update(ap50=float("inf")), "ap50: Input should be a finite number"),
    (lambda m, f: m.update(arch_id="0123456789"), "arch_id: '0123456789' is not the id of its arch"),
    (lambda m, f: m.update(arch="nonsense"), "arch: 'nonsense' has 1 fields"),
    (lambda m, f: m.update(status="great"), "status: Input should be 'ok', 'failed' or 'pending', got 'great'"),
    (lambda m, f: m.pop("classes"), "classes: Field required"),
    (lambda m, f: m["classes"].update(label_to_cat=[0]), "classes.label_to_cat: List should have at least 2 items"),
    (lambda m, f: m["classes"].update(names={"x": "a"}), "classes.names.x.[key]: String should match pattern"),
    (lambda m, f: m["graphs"][0].update(onnx="nope.onnx"), "graphs: nope.onnx of graph rpn is not listed in files"),
    (lambda m, f: m.update(feature_sizes=[[1, 0]]), "feature_sizes.0.1: Input should be greater than 0"),
    (lambda m, f: m.update(feature_sizes=[[1, 2, 3]]), "feature_sizes.0: List should have at most 2 items"),
    (lambda m, f: m.update(fingerprint={"backend": 1}), "fingerprint: missing fields"),
    (lambda m, f: m["verification"].update({"match_share_iou_0.99": "x"}), "verification.match_share_iou_0.99: "
                                                                          "Input should be a valid number"),
])
def test_damaged_manifests_are_one_line_errors(deployed: Path, tmp_path: Path, edit, message: str) -> None:  # type: ignore[no-untyped-def]
    folder = tmp_path / deployed.name
    shutil.copytree(deployed, folder)
    manifest = json.loads((folder / MANIFEST).read_text())
    first = next(iter(manifest["files"]))
    edit(manifest, first)
    (folder / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(DeployError, match=re.escape(message.replace("{f}", first))) as info:
        read_manifest(folder)
    assert len(str(info.value).splitlines()) == 1
    assert str(info.value).startswith(str(folder / MANIFEST))
    if "version" not in message:
        assert str(info.value).endswith("; deploy the model again")
