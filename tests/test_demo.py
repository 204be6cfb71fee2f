"""`smnas demo`: each step reuses what an earlier demo left; deploy/predict/report steps on a real run directory."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch
from rich.console import Console

from smnas_trt.deploy import read_manifest
from smnas_trt.pipeline import Demo, DemoPlan, _Skip, print_demo_summary, run_demo

ARCH = "64x64/r18_16_11-21-21-21/fpn:P3-P5:16/rpn/2fc:32"
TINY = DemoPlan(train_images=8, val_images=3, image_size=96, deploy_verify_images=2, predict_images=2)


def _fake_finished_search(demo: Demo) -> str:
    """A real run directory (frozen config + SQLite store) whose front is one candidate trained here."""
    from smnas_trt.search import STORE_FILE, RunStore
    from smnas_trt.space import parse
    from smnas_trt.training import TrainConfig, train_arch

    arch = parse(ARCH)
    ckpt_dir = demo.run_dir / "candidates" / arch.id
    torch.manual_seed(0)
    result = train_arch(ARCH, demo.data, ckpt_dir, TrainConfig(epochs=1, batch_size=4, warmup_iters=1,
                                                                progress=False))
    (demo.run_dir / "config.yaml").write_text(demo.search_config().to_yaml())
    store = RunStore(demo.run_dir / STORE_FILE)
    store.add_candidate(arch.id, ARCH, "structural", 0, None, 4.0, 0.4)
    store.update(arch.id, status="done", ap=0.05, ap50=0.1, measured_ms=5.0, rung=0, epochs=1,
                 checkpoint=str(result.checkpoint.relative_to(demo.run_dir)))
    store.set_front([arch.id])
    from smnas_trt.search.engine import FRONT_FILE, front_entry

    (demo.run_dir / FRONT_FILE).write_text(json.dumps({"front": [front_entry(c) for c in store.front()]}))
    store.close()
    demo._mark("search", front=[arch.id])
    return arch.id


def test_demo_steps_reuse_earlier_work_and_deploy_the_front(tmp_path: Path) -> None:
    text = io.StringIO()
    console = Console(file=text, width=120)
    demo = Demo(tmp_path / "demo_out", TINY, console)
    assert demo.step_data() is False
    assert demo.step_data() is True  # same plan: the generated data is reused
    with pytest.raises(_Skip, match="no model on its front"):
        demo.step_deploy()

    arch_id = _fake_finished_search(demo)
    assert demo.step_deploy() is False
    folder = demo.deployed / arch_id
    manifest = read_manifest(folder)
    assert manifest.status == "ok" and manifest.backend == "ort-cpu" and manifest.ap == 0.05
    assert manifest.latency.search and manifest.latency.search.predicted_ms == 4.0
    stamp = (folder / "manifest.json").stat().st_mtime_ns
    assert demo.step_deploy() is True  # already deployed from the same checkpoint: kept as is
    assert (folder / "manifest.json").stat().st_mtime_ns == stamp

    assert demo.step_predict() is False
    assert (demo.predictions / "detections.json").is_file()
    check, per_class = demo.result.prediction_check, demo.result.prediction_check_per_class
    assert check.images == 2 and 0 <= check.images_with_a_correct_box <= 2 and check.correct_boxes <= check.boxes
    assert json.loads((demo.predictions / "detections.json").read_text())["agnostic_nms"] is True  # what it drew
    assert per_class.images == 2 and per_class.boxes >= check.boxes  # one box per object drops, never adds
    assert demo.step_report() is False
    assert demo.result.report_md is not None and demo.result.report_md.is_file()
    assert demo.result.pareto_png is not None and demo.result.pareto_png.is_file()

    print_demo_summary(console, demo.result)
    out = text.getvalue()
    assert f"deployed:  {demo.deployed}/ (1 models" in out and "report:" in out and "plot:" in out
    assert "smnas predict --model" in out and "Pareto front" in out and arch_id in out
    assert "predictions: a correct box (IoU >= 0.5, right category) on" in out and "(per-class NMS only: " in out


def test_changed_plan_is_not_taken_for_finished_work(tmp_path: Path) -> None:
    demo = Demo(tmp_path, TINY, Console(file=io.StringIO()))
    demo._mark("lut", models=3)
    assert demo._marked("lut")
    other = Demo(tmp_path, DemoPlan(lut_models=TINY.lut_models + 1), Console(file=io.StringIO()))
    assert not other._marked("lut")


@pytest.mark.slow
def test_demo_end_to_end_tiny(tmp_path: Path) -> None:
    """Every step on a tiny plan (minutes on 2 cores): nothing skipped, report and deployed models written."""
    plan = DemoPlan(
        train_images=40, val_images=12, image_size=128, lut_models=10, lut_budget_s=0.02,
        lut_min_runs=3, deploy_verify_images=2, predict_images=2,
        search={"training.max_train_images": 24, "evaluation.max_images": 8, "structural.train": 1,
                "structural.rungs": [1, 2], "structural.eta": 2, "modular.generations": 1, "modular.train": 1,
                "modular.rungs": [1], "latency.budget_ms": 1000.0, "gate.oversampling": 5,
                "latency.timing": {"warmup_runs": 1, "warmup_s": 0.0, "min_runs": 3, "budget_s": 0.02}})
    result = run_demo(tmp_path / "demo_out", plan, Console(file=io.StringIO()))
    assert result.skipped == {}
    assert result.report_md is not None and result.report_md.is_file()
    assert result.deployed_models and all(
        read_manifest(result.out / "deployed" / i).verification.passed for i in result.deployed_models)
    again = run_demo(tmp_path / "demo_out", plan, Console(file=io.StringIO()))
    assert {"data", "lut", "search", "deploy"} <= set(again.reused)
