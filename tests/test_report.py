"""`smnas report` on a run store written by hand (real SQLite, no training): plot, tables, verdicts."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from smnas_trt.errors import SearchError
from smnas_trt.report import write_report
from smnas_trt.search.config import parse_search_config
from smnas_trt.search.store import RunStore, Screened


def _run_dir(tmp_path: Path) -> Path:
    run = tmp_path / "run"
    run.mkdir()
    cfg = parse_search_config({"data": str(tmp_path), "latency": {"budget_ms": 10.0, "lut": str(tmp_path / "x.db")}})
    (run / "config.yaml").write_text(yaml.safe_dump(cfg.frozen_dict()))
    store = RunStore(run / "run.db")
    rows = [  # arch, stage, gen, status, predicted, measured, AP
        ("a" * 10, "structural", 0, "done", 3.0, 3.3, 0.30),
        ("b" * 10, "structural", 0, "done", 6.0, 5.5, 0.45),
        ("c" * 10, "structural", 0, "over_budget", 9.0, 12.0, None),
        ("d" * 10, "modular", 1, "done", 2.5, 2.4, 0.31),
        ("e" * 10, "modular", 1, "done", 5.0, 6.0, 0.40),
    ]
    for gen in (0, 1):
        store.plan_generation(gen, "structural" if gen == 0 else "modular", gen, [
            Screened(gen, i, r[0], f"arch-{r[0]}", None, r[4], 0.2, "kept", i) for i, r in enumerate(rows)
            if r[2] == gen])
    for arch_id, stage, gen, status, pred, meas, ap in rows:
        store.add_candidate(arch_id, f"arch-{arch_id}", stage, gen, None, pred, 0.2)
        store.update(arch_id, status=status, measured_ms=meas)
        if ap is not None:  # two rungs of successive halving: 2 epochs, then on to 6
            store.finish_rung(arch_id, 0, "waiting", epochs=2, ap=ap / 3, ap50=ap / 2, rung_cpu_seconds=30.0)
            store.finish_rung(arch_id, 1, status, epochs=6, ap=ap, ap50=ap + 0.2, train_seconds=12.0,
                              rung_cpu_seconds=60.0, checkpoint=f"candidates/{arch_id}/last.pt")
            store.decide_rung(0, {arch_id: "promoted"})
            store.decide_rung(1, {arch_id: "top"})
    store.add_candidate("h" * 10, "arch-h", "structural", 0, None, 4.0, 0.2)
    store.finish_rung("h" * 10, 0, "waiting", epochs=2, ap=0.01, ap50=0.02, rung_cpu_seconds=30.0)
    store.decide_rung(0, {"h" * 10: "stopped"})
    store.set_front(["d" * 10, "b" * 10])
    store.finish_generation(0, n_trained=2, front_size=2, hypervolume=0.3, predictor_mape=0.12)
    store.finish_generation(1, n_trained=2, front_size=2, hypervolume=0.35, predictor_mape=0.08)
    store.put_reference("Faster R-CNN R50-FPN", "f" * 10, "arch-f", "done", measured_ms=8.0, ap=0.40, ap50=0.6)
    store.put_reference("RetinaNet R50-FPN", "g" * 10, "arch-g", "done", measured_ms=4.0, ap=0.5, ap50=0.7)
    store.close()
    return run


def test_report_files_tables_and_reference_verdicts(tmp_path: Path) -> None:
    files = write_report(_run_dir(tmp_path))
    assert files.folder == tmp_path / "run" / "report"
    for png in (files.pareto_png, files.rungs_png, files.predictor_png):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    front = files.front_md.read_text().splitlines()
    assert len(front) == 4  # header, rule, two front rows, fastest first
    assert "dddddddddd" in front[2] and "bbbbbbbbbb" in front[3]
    assert "| 1 of 0-0 | 6 |" in front[2]  # the rung (the test's config has one rung) and the epochs
    assert "+4.2%" in front[2]  # predicted 2.5 vs measured 2.4
    report = files.report_md.read_text()
    # (5.5, 0.45) dominates Faster R-CNN at (8.0, 0.40); nothing dominates RetinaNet at (4.0, 0.5).
    assert "| Faster R-CNN R50-FPN | `arch-f` | 0.400 | 0.600 | 8.00 | bbbbbbbbbb |" in report
    assert "| RetinaNet R50-FPN | `arch-g` | 0.500 | 0.700 | 4.00 | no |" in report
    assert "1 measured over budget before training" in report
    assert "1 stopped at a lower rung" in report and "6.5 CPU-minutes over 9 rung trainings" in report
    assert "![AP per rung](rungs.png)" in report
    assert "trainings on over-budget candidates: 0" in report
    assert "| 1 | modular | 2 | 0 | 0 | 2 | 2 | 0.350 | 8.0% |" in report


def test_report_refuses_a_folder_that_is_not_a_run(tmp_path: Path) -> None:
    with pytest.raises(SearchError, match=r"report: run .* is not a search run directory"):
        write_report(tmp_path)
