"""`smnas deploy`: for each chosen model, load its checkpoint, export the graph(s), build the
session/engine, verify against PyTorch on validation images, time `network` and `end2end` at batch 1,
and write `OUT/<arch id>/` (graphs, engine/model file, manifest.json) plus the table `OUT/models.md`.

Graphs: `models.graphs.detector_graphs`, the very graphs `profile-lut` and the search time (one-stage
`body`; two-stage `rpn` + `roi`, cut around the RPN's NMS), exported by the same exporter
(`profiling.export.export_onnx`, FP16 graphs for fp16). Decoding and NMS always run in torch
(torchvision's own post-processing, `decoder.py`), on every backend: one way for every scope.

Backends: `ort-cpu` and `ort-cuda` run the ONNX files; `tensorrt` builds an engine per graph with
the profiling backend's builder (engines copied into the model folder); `torch` keeps the trained
weights and runs PyTorch eager. fp16 needs a GPU backend (tensorrt, ort-cuda, torch on cuda).
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from smnas_trt.deploy.decoder import feature_sizes
from smnas_trt.deploy.manifest import (
    MANIFEST_FORMAT,
    MANIFEST_VERSION,
    DeployedManifest,
    file_entries,
    read_manifest,
    write_index,
    write_manifest,
)
from smnas_trt.deploy.runtime import WEIGHTS_FILE, Detector, GraphRun
from smnas_trt.deploy.verify import Verification, match_detections, tolerance_for
from smnas_trt.errors import DeployError, SmnasError
from smnas_trt.fileio import atomic_dir, atomic_path
from smnas_trt.models.graphs import detector_graphs
from smnas_trt.profiling.export import DEFAULT_EXPORTER
from smnas_trt.profiling.quantize import CALIBRATION_METHODS
from smnas_trt.profiling.spec import BACKEND_NAMES, BackendSpec, parse_backend_spec
from smnas_trt.profiling.timing import LatencyStats, TimingConfig
from smnas_trt.space import Arch

BACKENDS = BACKEND_NAMES
DEFAULT_VERIFY_IMAGES = 8
# int8: activation ranges (MinMax) from this many of the run's training images, drawn with `seed` (all of them
# when the split is smaller). bench/int8_calibration.py measured the demo front: 16, 64 and 256 images, MinMax
# or Percentile, all within 0.004 AP of fp32 (README, "INT8"); Percentile's histograms only add calibration
# time, and 256 images nearly double it, so 64 MinMax images are the default.
DEFAULT_CALIBRATION_IMAGES = 64
DEFAULT_CALIBRATION_METHOD = "minmax"
VERIFY_SCORE_THRESH = 0.01


@dataclass
class DeployTarget:
    """One model to deploy: its architecture, checkpoint, data, and what the search knew about it."""

    arch: str
    arch_id: str
    checkpoint: Path
    data_dir: Path | None
    ap: float | None = None
    ap50: float | None = None
    search: dict[str, Any] | None = None  # run, backend, scope, precision, predicted_ms, uncertainty_ms, measured_ms


@dataclass
class DeployOptions:
    out: Path
    spec: BackendSpec = field(default_factory=BackendSpec)  # backend, precision, threads, device it ships for
    overwrite: bool = False
    verify_images: int = DEFAULT_VERIFY_IMAGES
    split: str = "val"
    timing: TimingConfig = field(default_factory=TimingConfig)
    calibration_images: int = DEFAULT_CALIBRATION_IMAGES  # int8: training images the activation scales come from
    calibration_split: str = "train"
    calibration_method: str = DEFAULT_CALIBRATION_METHOD  # int8: minmax or percentile
    seed: int = 0  # int8: which training images calibrate
    score: bool = True  # COCO AP of the deployed model itself (and of PyTorch) on `split`
    score_images: int | None = None  # first N images of the split (None: all)


@dataclass
class DeployedModel:
    arch_id: str
    arch: str
    status: str  # ok | failed
    folder: Path | None
    manifest: DeployedManifest | None = None
    error: str | None = None


@dataclass
class DeployResult:
    out: Path
    models: list[DeployedModel]
    index_json: Path | None
    index_md: Path | None
    seconds: float

    @property
    def failed(self) -> list[DeployedModel]:
        return [m for m in self.models if m.status != "ok"]


StageLog = Callable[[str, str, float | None, int | None], None]


def _silent(stage: str, detail: str, seconds: float | None, size: int | None) -> None:
    del stage, detail, seconds, size


# ---------------------------------------------------------------------------------------------- checks
def deploy_spec(backend: str = "ort-cpu", precision: str = "fp32", threads: int | None = None,
                device: str | None = None) -> BackendSpec:
    """The BackendSpec of `smnas deploy`'s options; an impossible pair (fp16 on ort-cpu, ...) is one line."""
    try:
        return parse_backend_spec({"backend": backend, "precision": precision, "threads": threads,
                                   "device": device}, "deploy")
    except SmnasError as e:
        raise DeployError(str(e)) from None


# ---------------------------------------------------------------------------------------------- run dirs
def targets_from_run(run_dir: str | Path, arch_ids: list[str] | None = None,
                     data_dir: str | Path | None = None) -> list[DeployTarget]:
    """The models to deploy from a search run: its Pareto front, or the given arch ids (prefixes accepted)."""
    from smnas_trt.search import RunDir, is_run_dir

    run = Path(run_dir)
    if not is_run_dir(run):
        raise DeployError(f"--run {str(run)!r} is not a search run directory (no config.yaml and run.db); "
                          "give the --out folder of smnas search")
    with RunDir.open(run) as handle:
        config, store = handle.config, handle.store
        if arch_ids:
            everything = store.candidates()
            chosen = []
            for wanted in arch_ids:
                hits = [c for c in everything if c.arch_id.startswith(wanted) or c.arch == wanted]
                if len(hits) != 1:
                    trained = [c.arch_id for c in everything if c.checkpoint]
                    what = "is ambiguous" if hits else "is not in the run"
                    raise DeployError(f"--arch {wanted!r} {what}; trained candidates of {run}: "
                                      f"{', '.join(trained[:12]) or 'none'}{' ...' if len(trained) > 12 else ''}")
                chosen.append(hits[0])
        else:
            chosen = store.front()
            if not chosen:
                raise DeployError(f"run {str(run)!r} has no Pareto front yet (no candidate trained and timed within "
                                  f"the budget); let the search finish (smnas search --out {run} --resume) "
                                  "or pass --arch ID")
        drift_of = {d["generation"]: d["ratio"] for d in store.drifts() if d["phase"] == "generation"}
    lat = config.latency
    targets = []
    for c in chosen:
        if not c.checkpoint:
            raise DeployError(f"--arch {c.arch_id}: candidate has no checkpoint (status {c.status}); only trained "
                              "candidates can be deployed")
        ckpt = Path(c.checkpoint)
        targets.append(DeployTarget(
            arch=c.arch, arch_id=c.arch_id, checkpoint=ckpt if ckpt.is_absolute() else run / ckpt,
            data_dir=Path(data_dir) if data_dir else Path(config.data), ap=c.ap, ap50=c.ap50,
            search={"run": str(run.resolve()), "backend_spec": lat.spec().model_dump(), "scope": lat.scope,
                    "budget_ms": lat.budget_ms, "predicted_ms": c.predicted_ms, "drift": drift_of.get(c.generation),
                    "uncertainty_ms": c.uncertainty_ms, "measured_ms": c.measured_ms},
        ))
    return targets


def target_from_checkpoint(checkpoint: str | Path, data_dir: str | Path | None,
                           ap: float | None = None, ap50: float | None = None) -> DeployTarget:
    """A model straight from a checkpoint written by `smnas train` (no search run)."""
    from smnas_trt.training import load_checkpoint

    meta = dict(load_checkpoint(checkpoint).get("meta") or {})
    if "arch" not in meta:
        raise DeployError(f"{checkpoint}: checkpoint has no architecture string (not written by smnas train)")
    from smnas_trt.space import parse

    arch = parse(meta["arch"])
    return DeployTarget(arch=str(arch), arch_id=arch.id, checkpoint=Path(checkpoint),
                        data_dir=Path(data_dir) if data_dir else None, ap=ap, ap50=ap50)


# ---------------------------------------------------------------------------------------------- deploy
def deploy_models(targets: list[DeployTarget], options: DeployOptions, log: StageLog | None = None,
                  on_model: Callable[[int, DeployTarget], None] | None = None) -> DeployResult:
    """Deploy every target into `options.out`; a model that fails is recorded and the others go on.

    Refused before any work: an unknown backend, fp16 where the backend cannot run it, a backend
    that is not available here, and an existing `OUT/<arch id>/` without `options.overwrite`.
    """
    log = log or _silent
    if not targets:
        raise DeployError("nothing to deploy: no models were chosen")
    if options.verify_images < 1:
        raise DeployError(f"--verify-images must be >= 1, got {options.verify_images}")
    out = Path(options.out)
    if out.exists() and not out.is_dir():
        raise DeployError(f"--out {str(out)!r} exists and is not a folder")
    seen: set[str] = set()
    for t in targets:
        if t.arch_id in seen:
            raise DeployError(f"model {t.arch_id} was chosen twice")
        seen.add(t.arch_id)
        if (out / t.arch_id).exists() and not options.overwrite:
            raise DeployError(f"output folder {out / t.arch_id} exists; pass --overwrite to replace it, or choose "
                              "another --out")
        if t.data_dir is None:
            raise DeployError(f"model {t.arch_id}: no dataset to verify on; pass --data DIR")
        if options.spec.precision == "int8":
            _check_calibration_data(t, options)
    if options.spec.precision == "int8" and options.calibration_images < 1:
        raise DeployError(f"--calibration-images must be >= 1, got {options.calibration_images}")
    if options.calibration_method not in CALIBRATION_METHODS:
        raise DeployError(f"--calibration-method {options.calibration_method!r} is not one of "
                          f"{', '.join(CALIBRATION_METHODS)}")
    backend = options.spec.build()  # raises BackendUnavailableError here, before any export
    start = time.perf_counter()
    drifts = _measure_drifts(targets, options, backend, log)
    models: list[DeployedModel] = []
    for i, target in enumerate(targets):
        if on_model is not None:
            on_model(i, target)
        try:
            manifest = deploy_one(target, options, backend, log, drifts.get(_run_of(target) or ""))
            models.append(DeployedModel(target.arch_id, target.arch, manifest.status, out / target.arch_id,
                                        manifest))
        except SmnasError as e:
            log("error", str(e), None, None)
            models.append(DeployedModel(target.arch_id, target.arch, "failed", None, error=str(e)))
    out.mkdir(parents=True, exist_ok=True)
    index_json, index_md = write_index(out)
    return DeployResult(out, models, index_json, index_md, time.perf_counter() - start)


def _check_calibration_data(target: DeployTarget, options: DeployOptions) -> None:
    """int8 needs training images to calibrate on: refused in one line before anything is written."""
    from smnas_trt.data.coco import resolve_split
    from smnas_trt.errors import DataError

    try:
        resolve_split(target.data_dir, options.calibration_split)  # type: ignore[arg-type]
    except DataError as e:
        raise DeployError(f"model {target.arch_id}: --precision int8 calibrates on the '{options.calibration_split}' "
                          f"images of the dataset, but {e}; pass --data DIR with a training split") from None


def _run_of(target: DeployTarget) -> str | None:
    return (target.search or {}).get("run")


def _measure_drifts(targets: list[DeployTarget], options: DeployOptions, backend: Any,
                    log: StageLog) -> dict[str, dict[str, Any]]:
    """This deploy's drift against the latency table of each search run the models come from, measured on
    the table's anchors when the deploy times what the search timed (same backend spec); recorded in the
    manifests, and the search's predictions are corrected by it."""
    from smnas_trt.profiling.cache import OnnxCache, default_onnx_cache
    from smnas_trt.profiling.profile import measure_drift
    from smnas_trt.search import TABLE_FILE

    out: dict[str, dict[str, Any]] = {}
    for run in sorted({r for t in targets if (r := _run_of(t))}):
        search = next(t.search for t in targets if _run_of(t) == run)
        if not search or search.get("backend_spec") != options.spec.model_dump():
            continue  # another backend or setting than the search timed: not comparable
        table = Path(run) / TABLE_FILE
        if not table.is_file():
            log("drift", f"drift cannot be measured: the run has no latency table ({table})", None, None)
            continue
        t0 = time.perf_counter()
        with OnnxCache(default_onnx_cache()) as cache:
            drift, line = measure_drift(backend, table, options.timing, cache, "deploy")
        log("drift", line, time.perf_counter() - t0, None)
        if drift is not None:
            out[run] = {"ratio": drift.ratio, "spread": drift.spread, "anchors": drift.n}
            if drift.warn:
                log("warning", drift.warning("the latencies measured here"), None, None)
    return out


def deploy_one(target: DeployTarget, options: DeployOptions, backend: Any, log: StageLog,
               drift: dict[str, Any] | None = None) -> DeployedManifest:
    """Deploy one model into `options.out/<arch id>/` (written atomically); returns its manifest."""
    from smnas_trt import __version__
    from smnas_trt.data import CocoDetection
    from smnas_trt.training import load_trained
    from smnas_trt.training.trainer import TrainingError

    t0 = time.perf_counter()
    model: Any
    try:
        model, meta = load_trained(target.checkpoint)
    except TrainingError as e:
        raise DeployError(f"model {target.arch_id}: {e}") from None
    if meta["arch"] != target.arch:
        raise DeployError(f"{target.checkpoint}: holds {meta['arch']}, but the run lists {target.arch}")
    model.eval()
    arch: Arch = model.arch
    log("checkpoint", f"{target.checkpoint.name} ({_ap_text(target)})", time.perf_counter() - t0,
        target.checkpoint.stat().st_size)

    input_size = (arch.size.width, arch.size.height)
    assert target.data_dir is not None
    images = CocoDetection(target.data_dir, options.split, input_size, max_images=options.verify_images)
    if images.label_to_cat != list(meta["label_to_cat"]):
        raise DeployError(f"model {target.arch_id} was trained on categories {meta['label_to_cat'][1:]} but "
                          f"{target.data_dir} split '{options.split}' has {images.label_to_cat[1:]}")

    folder = Path(options.out) / target.arch_id
    with atomic_dir(folder) as tmp:
        specs = detector_graphs(model, arch)
        files: list[str] = []
        graphs: list[dict[str, Any]] = []
        spec = options.spec
        if spec.backend == "torch":
            t0 = time.perf_counter()
            with atomic_path(tmp / WEIGHTS_FILE) as path:
                torch.save(model.state_dict(), path)
            files.append(WEIGHTS_FILE)
            log("weights", f"{WEIGHTS_FILE} (PyTorch eager)", time.perf_counter() - t0,
                (tmp / WEIGHTS_FILE).stat().st_size)
            graphs = [{"name": s.name, "inputs": s.input_names, "outputs": s.output_names} for s in specs]
        else:
            graphs = _export_graphs(specs, tmp, options, log, files)
        # The manifest's fields as plain values; each write validates them (DeployedManifest) as a reader will.
        record: dict[str, Any] = {
            "format": MANIFEST_FORMAT, "version": MANIFEST_VERSION, "smnas_version": __version__,
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "arch": target.arch, "arch_id": target.arch_id, "status": "pending",
            "ap": target.ap, "ap50": target.ap50,
            "backend": spec.backend, "backend_version": backend.version(), "precision": spec.precision,
            "backend_spec": spec.model_dump(),
            "fingerprint": backend.fingerprint().to_dict(),
            "graphs": graphs, "feature_sizes": [list(s) for s in feature_sizes(model, arch)],
            "classes": {"label_to_cat": list(meta["label_to_cat"]),
                        "names": {str(c): n for c, n in zip(meta["label_to_cat"][1:], meta["class_names"],
                                                           strict=True)}},
            "input": {"width": arch.size.width, "height": arch.size.height,
                      "resize": "plain bilinear to width x height (aspect not kept), RGB in [0, 1]",
                      "mean": list(model.transform.image_mean), "std": list(model.transform.image_std),
                      "pad_to_multiple_of": model.transform.size_divisible},
            "postprocess": _postprocess_settings(model),
            "verification": {"score_thresh": VERIFY_SCORE_THRESH}, "latency": {},
            "source": {"checkpoint": str(Path(target.checkpoint).resolve()), "data": str(target.data_dir),
                       "split": options.split, "run": (target.search or {}).get("run")},
        }
        if spec.precision == "int8":
            # The float graphs calibrate: a manifest of them as they are now (quantized in place after).
            floats = DeployedManifest.model_validate({**record, "files": file_entries(tmp, files)})
            record["calibration"] = _calibrate(model, target, options, tmp, floats, log)
        if spec.backend == "tensorrt":
            _build_engines(graphs, tmp, options, backend, log, files)
        record["files"] = file_entries(tmp, files)
        write_manifest(tmp, DeployedManifest.model_validate(record))
        detector = Detector.load(tmp, allow_failed=True)
        try:
            t0 = time.perf_counter()
            verification = verify(model, specs, detector, images, spec.precision)
            verdict = "[green]PASS[/]" if verification.passed else "[red]FAIL[/]: " + "; ".join(verification.failures())
            log("verify", f"{verification.summary()} {verdict}", time.perf_counter() - t0, None)
            t0 = time.perf_counter()
            pixels = images[0][0]
            timed = detector.time(pixels, options.timing)
            accuracy = _score(model, detector, target, options, log) if options.score else None
        finally:
            detector.close()
        latency = _latency_record(timed, target, options, drift)
        log("latency", _latency_text(latency), time.perf_counter() - t0, None)
        record.update(status="ok" if verification.passed else "failed",
                      verification={**verification.to_dict(), "score_thresh": VERIFY_SCORE_THRESH,
                                    "split": options.split},
                      latency=latency, accuracy=accuracy)
        manifest = DeployedManifest.model_validate(record)
        write_manifest(tmp, manifest)
    log("saved", str(folder), None, manifest.size_bytes())
    return read_manifest(folder)


def _export_graphs(specs: list[Any], tmp: Path, options: DeployOptions, log: StageLog,
                   files: list[str]) -> list[dict[str, Any]]:
    """Export each graph to `tmp` (fp32 for int8: quantized after calibration) and list it in `files`."""
    from smnas_trt.profiling.export import export_onnx

    graphs = []
    for spec in specs:
        t0 = time.perf_counter()
        onnx_name = f"{spec.name}.onnx"
        info = export_onnx(spec.module, spec.example_inputs, tmp / onnx_name, exporter=DEFAULT_EXPORTER,
                           precision=options.spec.precision, input_names=spec.input_names,
                           output_names=spec.output_names)
        files.append(onnx_name)
        log("export", f"{onnx_name} (ONNX opset {info.opset}, {info.exporter}, {info.precision})",
            time.perf_counter() - t0, (tmp / onnx_name).stat().st_size)
        graphs.append({"name": spec.name, "onnx": onnx_name, "inputs": spec.input_names,
                       "outputs": spec.output_names, "exporter": info.exporter, "opset": info.opset,
                       "input_shapes": [list(s) for s in info.input_shapes]})
    return graphs


def _build_engines(graphs: list[dict[str, Any]], tmp: Path, options: DeployOptions, backend: Any, log: StageLog,
                   files: list[str]) -> None:
    """A TensorRT engine per graph (int8: from the QDQ graph), copied into the model folder."""
    for entry in graphs:
        t0 = time.perf_counter()
        onnx_path = tmp / entry["onnx"]
        runner = backend.load(onnx_path)  # builds (or reuses) the engine in the backend's cache
        runner.close()
        engine_name = f"{entry['name']}.engine"
        shutil.copyfile(backend.engine_path(onnx_path), tmp / engine_name)
        files.append(engine_name)
        entry["engine"] = engine_name
        log("engine", f"{engine_name} (TensorRT {backend.version()}, {options.spec.precision})",
            time.perf_counter() - t0, (tmp / engine_name).stat().st_size)


def _calibrate(model: Any, target: DeployTarget, options: DeployOptions, tmp: Path, manifest: DeployedManifest,
               log: StageLog) -> dict[str, Any]:
    """Quantize the exported fp32 graphs in `tmp` in place (QDQ, `profiling.quantize`), calibrated on the inputs
    each graph receives from the float pipeline on `calibration_images` training images drawn with `seed`."""
    import random

    from smnas_trt.data import CocoDetection
    from smnas_trt.profiling.quantize import quantize_onnx, scheme_for

    t0 = time.perf_counter()
    arch: Arch = model.arch
    assert target.data_dir is not None
    data = CocoDetection(target.data_dir, options.calibration_split, (arch.size.width, arch.size.height))
    n = min(options.calibration_images, len(data))
    indices = sorted(random.Random(options.seed).sample(range(len(data)), n))
    feeds: dict[str, list[dict[str, Any]]] = {g.name: [] for g in manifest.graphs}
    names = {g.name: g.inputs for g in manifest.graphs}

    def keep(run: GraphRun) -> None:
        feeds[run.name].append(dict(zip(names[run.name], run.inputs, strict=True)))

    with Detector.float_onnx(tmp, manifest, model) as reference:
        for index in indices:
            reference.detect_prepared(reference.normalise(data[index][0]), keep)
    scheme = scheme_for(options.spec.backend)
    qdq: dict[str, int] = {}
    info = None
    for graph in manifest.graphs:
        assert graph.onnx is not None
        info = quantize_onnx(tmp / graph.onnx, tmp / graph.onnx, feeds[graph.name], scheme,
                             options.calibration_method)  # type: ignore[arg-type]  # checked in deploy_models
        qdq[graph.name] = info.qdq_nodes
    assert info is not None
    record = {"split": options.calibration_split, "images": n, "available": len(data), "seed": options.seed,
              "method": info.method, "scheme": scheme, "per_channel": info.per_channel,
              "quantized_ops": list(info.quantized_ops), "float_ops": info.float_ops, "qdq_nodes": qdq,
              "what": "activation ranges of the float graphs on these training images; weights per channel"}
    log("calibrate", f"{n} {options.calibration_split} images (of {len(data)}, seed {options.seed}), {scheme} "
        f"{info.method}; {sum(qdq.values())} Q/DQ nodes", time.perf_counter() - t0, None)
    return record


def _score(model: Any, detector: Detector, target: DeployTarget, options: DeployOptions,
           log: StageLog) -> dict[str, Any]:
    from smnas_trt.data import CocoDetection
    from smnas_trt.deploy.score import score_deployed

    t0 = time.perf_counter()
    arch: Arch = model.arch
    assert target.data_dir is not None
    dataset = CocoDetection(target.data_dir, options.split, (arch.size.width, arch.size.height),
                            max_images=options.score_images)
    record = score_deployed(model, detector, dataset)
    log("score", f"AP {record['deployed']['AP']:.3f} deployed vs {record['pytorch']['AP']:.3f} PyTorch "
        f"(ΔAP {record['delta_ap']:+.3f}) on {record['images']} {options.split} images", time.perf_counter() - t0,
        None)
    return record


def _postprocess_settings(model: Any) -> dict[str, Any]:
    if hasattr(model, "roi_heads"):
        heads = model.roi_heads
        return {"score_thresh": heads.score_thresh, "nms_thresh": heads.nms_thresh,
                "detections_per_img": heads.detections_per_img, "rpn_post_nms_top_n": model.rpn.post_nms_top_n(),
                "rpn_pre_nms_top_n": model.rpn.pre_nms_top_n(), "rpn_nms_thresh": model.rpn.nms_thresh}
    return {"score_thresh": model.score_thresh, "nms_thresh": model.nms_thresh,
            "detections_per_img": model.detections_per_img, "topk_candidates": model.topk_candidates}


# ---------------------------------------------------------------------------------------------- verify
@contextmanager
def score_threshold(models: list[Any], value: float) -> Iterator[None]:
    """Temporarily lower the final score threshold of detectors (RetinaNet/FCOS or RoIHeads)."""
    owners: list[Any] = [m.roi_heads if hasattr(m, "roi_heads") else m for m in models]
    before = [o.score_thresh for o in owners]
    for o in owners:
        o.score_thresh = min(o.score_thresh, value)
    try:
        yield
    finally:
        for o, b in zip(owners, before, strict=True):
            o.score_thresh = b


@torch.no_grad()
def verify(model: Any, specs: list[Any], detector: Detector, images: Any, precision: str) -> Verification:
    """Compare the deployed model with PyTorch (the trained model as is, eval mode) on `images`.

    Detections: PyTorch's full forward vs the deployed pipeline, matched box by box, both at score
    threshold VERIFY_SCORE_THRESH (below the models' 0.05, so more boxes are compared: a barely
    trained model may have none above 0.05). Graph outputs: each deployed graph vs the same PyTorch
    module on the very inputs the graph received.
    """
    result = Verification(precision, tolerance_for(precision))
    with score_threshold([model, detector.model], VERIFY_SCORE_THRESH):
        settings = _postprocess_settings(model)
        _verify_images(model, specs, detector, images, result, settings)
    return result


def _verify_images(model: Any, specs: list[Any], detector: Detector, images: Any, result: Verification,
                   settings: dict[str, Any]) -> None:
    modules = {s.name: s.module for s in specs}
    for index in range(len(images)):
        pixels = images[index][0]
        ref = model([pixels])[0]
        runs: list[GraphRun] = []
        test = detector.detect_prepared(detector.normalise(pixels), runs.append)
        result.add(match_detections(ref, test, result.tolerance, float(settings["score_thresh"]),
                                    int(settings["detections_per_img"])))
        for run in runs:
            inputs = [torch.from_numpy(x).float() for x in run.inputs]
            expected = modules[run.name](*inputs)
            for name, got, want in zip(_output_names(detector, run.name), run.outputs, expected, strict=True):
                result.add_outputs(f"{run.name}.{name}", got, want.numpy())


def _output_names(detector: Detector, graph: str) -> list[str]:
    return next(g.outputs for g in detector.manifest.graphs if g.name == graph)


# ---------------------------------------------------------------------------------------------- latency
def _stats(s: LatencyStats) -> dict[str, Any]:
    return s.as_dict()


def _latency_record(timed: dict[str, Any], target: DeployTarget, options: DeployOptions,
                    drift: dict[str, Any] | None = None) -> dict[str, Any]:
    graphs = {name: _stats(s) for name, s in timed["graphs"].items()}
    network: dict[str, Any] = {"median_ms": timed["network_ms"], "graphs": graphs,
                               "what": "the graph(s) on the backend; two-stage: rpn + roi medians"}
    if len(graphs) == 1:
        network.update({k: v for k, v in next(iter(graphs.values())).items()})
    end2end = {**_stats(timed["end2end"]),
               "what": "graph(s) + torchvision decoding, proposal filtering and NMS, prepared input to detections"}
    record: dict[str, Any] = {"network": network, "end2end": end2end, "batch": 1,
                              "timing": {k: getattr(options.timing, k) for k in
                                         ("warmup_runs", "warmup_s", "min_runs", "max_runs", "budget_s")}}
    search = target.search
    if search:
        # Comparable when the search timed what is deployed here: same backend, precision, batch, threads, device.
        comparable = search.get("backend_spec") == options.spec.model_dump()
        record["search"] = {**search, "comparable": comparable}
        if comparable and search.get("scope") in ("network", "end2end"):
            scope = record[search["scope"]]
            scope["predicted_ms"] = search.get("predicted_ms")
            scope["search_measured_ms"] = search.get("measured_ms")
            if drift is not None and search.get("predicted_ms") is not None:
                # The search predicted its own machine state; this deploy's anchors say where this one stands.
                scope["predicted_ms_here"] = search["predicted_ms"] / (search.get("drift") or 1.0) * drift["ratio"]
    if drift is not None:
        record["drift"] = {**drift, "what": "this deploy's anchor timings / the search run's latency table"}
    return record


def _latency_text(latency: dict[str, Any]) -> str:
    text = f"network {latency['network']['median_ms']:.2f} ms · end2end {latency['end2end']['median_ms']:.2f} ms"
    search = latency.get("search") or {}
    if search.get("predicted_ms") is not None:
        theirs = BackendSpec.model_validate(search["backend_spec"]).describe() if search.get("backend_spec") else "?"
        note = "" if search.get("comparable") else f" on {theirs}"
        text += f" (predicted {search['predicted_ms']:.2f} ms {search['scope']}{note})"
    return text


def _ap_text(target: DeployTarget) -> str:
    if target.ap is None:
        return "AP not recorded"
    return f"AP {target.ap:.3f}" + (f", AP50 {target.ap50:.3f}" if target.ap50 is not None else "")
