"""Run a deployed model: `Detector.load(DIR).predict(image) -> Detections(boxes, scores, labels)`.

Pre-processing is the training data's (plain resize to the arch's input size, [0, 1] floats), then
the model's own transform (normalise, pad to a multiple of 32). The graph(s) run on the backend the
model was deployed for (ONNX Runtime session, TensorRT engine, or PyTorch eager); decoding and NMS
are torchvision's own post-processing (`decoder.Decoder`). Boxes come back in the original image's
pixels (x1, y1, x2, y2) with the dataset's category ids as labels.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from PIL import Image

from smnas_trt.deploy.decoder import Decoder
from smnas_trt.deploy.manifest import DeployedManifest, check_files, read_manifest
from smnas_trt.errors import DeployError, SmnasError
from smnas_trt.models.graphs import GraphSpec, detector_graphs
from smnas_trt.profiling.backends import torch_threads
from smnas_trt.profiling.spec import BackendSpec
from smnas_trt.profiling.timing import HostClock, TimingConfig, time_runs
from smnas_trt.space import Arch, parse

ImageInput = str | Path | Image.Image | np.ndarray | torch.Tensor
WEIGHTS_FILE = "weights.pt"  # the torch backend's model file: the trained state_dict


class Detections(NamedTuple):
    """Detections of one image: boxes [N, 4] xyxy in the image's pixels, scores [N], labels [N] (category ids)."""

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray


@dataclass
class GraphRun:
    """One graph's inputs and outputs in a forward (verification compares them with PyTorch)."""

    name: str
    inputs: list[np.ndarray]
    outputs: list[np.ndarray]


def load_image(image: ImageInput) -> Image.Image | torch.Tensor:
    """A path, PIL image or HxWx3 uint8 array as an RGB PIL image; a [3, H, W] float tensor is kept."""
    if isinstance(image, torch.Tensor):
        if image.ndim != 3 or image.shape[0] != 3:
            raise DeployError(f"image tensor must be [3, H, W] floats in [0, 1], got shape {tuple(image.shape)}")
        return image.float()
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3:
            raise DeployError(f"image array must be H x W x 3 (RGB), got shape {image.shape}")
        return Image.fromarray(image.astype(np.uint8))
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    path = Path(image)
    if not path.is_file():
        raise DeployError(f"image not found: {path}")
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except OSError as e:
        raise DeployError(f"cannot read image {path}: {e}") from None


def resize_to_input(image: Image.Image | torch.Tensor, arch: Arch) -> tuple[torch.Tensor, tuple[int, int]]:
    """Plain resize to the arch's (W, H), as the training data loader does; returns ([3, H, W], original (w, h))."""
    w, h = arch.size.width, arch.size.height
    if isinstance(image, torch.Tensor):
        orig = (int(image.shape[2]), int(image.shape[1]))
        if orig != (w, h):
            image = torch.nn.functional.interpolate(image[None], size=(h, w), mode="bilinear",
                                                    align_corners=False)[0]
        return image, orig
    orig = image.size
    if orig != (w, h):
        image = image.resize((w, h), Image.Resampling.BILINEAR)
    pixels = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1)
    return pixels.float().div_(255.0), orig


class Detector:
    """A deployed model ready to run. Build it with `Detector.load(folder)`."""

    def __init__(self, folder: Path, manifest: DeployedManifest, model: Any, runners: list[Any],
                 specs: list[GraphSpec] | None = None) -> None:
        self.folder = folder
        self.manifest = manifest
        self.arch = parse(manifest.arch)
        self.model = model  # supplies transform and post-processing; its weights matter only for `torch`
        self.runners = runners
        self.graph_names = [g.name for g in manifest.graphs]
        self.decoder = Decoder(model, self.arch, [(h, w) for h, w in manifest.feature_sizes])
        self.label_to_cat: list[int] = list(manifest.classes.label_to_cat)
        self.class_names: dict[int, str] = {int(k): v for k, v in manifest.classes.names.items()}
        self._specs = specs

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(cls, folder: str | Path, threads: int | None = None, allow_failed: bool = False,
             check_hashes: bool = True) -> Detector:
        """Load `folder` (written by `smnas deploy`): checks the manifest and every file's SHA-256 first.

        `threads`: intra-op threads for CPU backends (default: the threads it was deployed and timed with).
        A model that failed verification is refused unless `allow_failed`.
        """
        from smnas_trt.models import build_detector

        folder = Path(folder)
        manifest = read_manifest(folder)
        if check_hashes:
            check_files(folder, manifest)
        if manifest.status != "ok" and not allow_failed:
            failures = "; ".join(manifest.verification.failures) or f"status {manifest.status}"
            raise DeployError(f"{folder}: this model failed verification against PyTorch ({failures}); "
                              "deploy it again or load with allow_failed=True")
        arch = parse(manifest.arch)
        num_classes = len(manifest.classes.label_to_cat)
        model = build_detector(arch, num_classes).eval()
        spec = deployed_spec(manifest, threads)
        specs: list[GraphSpec] | None = None
        if spec.backend == "torch":
            state = torch.load(folder / WEIGHTS_FILE, map_location="cpu", weights_only=True)
            model.load_state_dict(state)
            specs = detector_graphs(model, arch)
            runners = _torch_runners(specs, spec)
        else:
            runners = _file_runners(folder, manifest, spec)
        return cls(folder, manifest, model, runners, specs)

    @classmethod
    def float_onnx(cls, folder: str | Path, manifest: DeployedManifest, model: Any) -> Detector:
        """The folder's ONNX graphs on ONNX Runtime CPU as they are (fp32), whatever the manifest ships for:
        the float pipeline whose graph inputs calibrate an int8 deploy. `model` supplies pre/post-processing."""
        folder = Path(folder)
        spec = BackendSpec(threads=1)
        float_manifest = manifest.model_copy(update={"backend": spec.backend, "precision": spec.precision,
                                                     "backend_spec": spec})
        return cls(folder, float_manifest, model, _file_runners(folder, float_manifest, spec), None)

    def close(self) -> None:
        for runner in self.runners:
            runner.close()
        self.runners = []

    def __enter__(self) -> Detector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ inference
    @property
    def input_size(self) -> tuple[int, int]:
        """(width, height) every image is resized to."""
        return (self.arch.size.width, self.arch.size.height)

    def prepare(self, image: ImageInput) -> tuple[torch.Tensor, tuple[int, int]]:
        """(normalised, padded [1, 3, H, W] body input, original (w, h))."""
        pixels, orig = resize_to_input(load_image(image), self.arch)
        return self.normalise(pixels), orig

    def normalise(self, pixels: torch.Tensor) -> torch.Tensor:
        """[3, H, W] in [0, 1] at the input size -> the body input (the model's own transform)."""
        with torch.no_grad():
            return self.model.transform([pixels])[0].tensors

    def _run_graph(self, index: int, inputs: Sequence[np.ndarray | torch.Tensor]) -> list[np.ndarray]:
        """Run graph `index` on inputs in the manifest's order; outputs come back in the manifest's order.

        Engines and sessions name their tensors as the ONNX graph does; matching by name keeps the
        order right whatever order a backend lists its I/O in (the torch runner has no names).
        """
        runner = self.runners[index]
        graph = self.manifest.graphs[index]
        outputs = runner.run(self._feeds(index, inputs))
        names = getattr(runner, "output_names", None)
        if names is not None and list(names) != graph.outputs and set(names) == set(graph.outputs):
            position = {name: i for i, name in enumerate(names)}
            outputs = [outputs[position[name]] for name in graph.outputs]
        return outputs

    def _feeds(self, index: int, inputs: Sequence[np.ndarray | torch.Tensor]) -> Any:
        """Inputs of graph `index` as the runner takes them: by name where it has the graph's names."""
        runner = self.runners[index]
        names = self.manifest.graphs[index].inputs
        by_name = {spec.name: spec for spec in runner.inputs}
        if set(by_name) == set(names):
            return {name: _as_numpy(x, by_name[name].dtype) for name, x in zip(names, inputs, strict=True)}
        return [_as_numpy(x, spec.dtype) for x, spec in zip(inputs, runner.inputs, strict=True)]

    def detect_prepared(self, x: torch.Tensor, record: Callable[[GraphRun], None] | None = None
                        ) -> dict[str, torch.Tensor]:
        """Detections (boxes in input pixels, scores, labels 1..K) from a prepared body input."""
        if self.manifest.backend == "torch":
            return self._detect(x, record)
        # Post-processing is small: on one torch thread, so it does not fight the engine's spinning
        # worker threads for the cores (on 2 cores that costs 5x in end2end latency).
        with torch_threads(1):
            return self._detect(x, record)

    def _detect(self, x: torch.Tensor, record: Callable[[GraphRun], None] | None) -> dict[str, torch.Tensor]:
        if not self.decoder.two_stage:
            outs = self._run_graph(0, [x])
            if record:
                record(GraphRun(self.graph_names[0], [x.numpy()], outs))
            return self.decoder.dense([torch.from_numpy(o) for o in outs])
        outs = self._run_graph(0, [x])
        if record:
            record(GraphRun(self.graph_names[0], [x.numpy()], outs))
        maps = outs[:-2]
        valid, padded = self.decoder.proposals(torch.from_numpy(outs[-2]), torch.from_numpy(outs[-1]))
        roi_inputs = [*maps, padded.numpy()]
        roi_outs = self._run_graph(1, roi_inputs)
        if record:
            record(GraphRun(self.graph_names[1], roi_inputs, roi_outs))
        return self.decoder.rcnn([torch.from_numpy(o) for o in roi_outs], valid)

    def predict(self, image: ImageInput, agnostic_nms: bool = False) -> Detections:
        """Detections of one image (path, PIL image, HxWx3 uint8 RGB array or [3, H, W] float tensor).

        `agnostic_nms` keeps one box per object: after the model's own per-class NMS, a box is dropped where
        a higher-scored box of any class overlaps it above the same IoU threshold. Right for data whose
        objects do not overlap, where the other box is the classifier's second guess at the same object.
        """
        x, orig = self.prepare(image)
        det = self.detect_prepared(x)
        if agnostic_nms:
            from torchvision.ops import nms

            keep = nms(det["boxes"], det["scores"], self.decoder.nms_thresh)
            det = {k: v[keep] for k, v in det.items()}
        boxes = det["boxes"].clone()
        sx, sy = orig[0] / self.arch.size.width, orig[1] / self.arch.size.height
        boxes *= torch.tensor([sx, sy, sx, sy])
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, orig[0])
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, orig[1])
        cats = np.asarray(self.label_to_cat, dtype=np.int64)[det["labels"].numpy()]
        return Detections(boxes.numpy().astype(np.float32), det["scores"].numpy().astype(np.float32), cats)

    def category_name(self, category_id: int) -> str:
        return self.class_names.get(int(category_id), str(category_id))

    # ------------------------------------------------------------------ timing
    def time(self, image: ImageInput | None = None, config: TimingConfig | None = None) -> dict[str, Any]:
        """Median latencies at batch 1: `network` (the graph(s); two-stage: the sum of both) and `end2end`
        (graphs plus decoding, proposal filtering and NMS, from the prepared input to detections)."""
        x = self.set_timing_inputs(image)
        graphs = {name: runner.time(config) for name, runner in zip(self.graph_names, self.runners, strict=True)}
        end2end = time_runs(lambda: self.detect_prepared(x), config, HostClock())
        network_ms = sum(s.median_ms for s in graphs.values())
        return {"graphs": graphs, "network_ms": network_ms, "end2end": end2end}

    def set_timing_inputs(self, image: ImageInput | None = None) -> torch.Tensor:
        """Give each graph's runner the inputs it gets from `image` (a random one by default) in the real
        pipeline, so graph timings see real intermediate tensors; returns the prepared input."""
        x = self.prepare(image)[0] if image is not None else torch.rand(self.decoder_input_shape())
        runs: list[GraphRun] = []
        self.detect_prepared(x, runs.append)
        for i, run in enumerate(runs):
            self.runners[i].set_inputs(self._feeds(i, run.inputs))
        return x

    def decoder_input_shape(self) -> tuple[int, ...]:
        from smnas_trt.models.graphs import body_input_shape

        return body_input_shape(self.arch)


def _as_numpy(x: np.ndarray | torch.Tensor, dtype: str) -> np.ndarray:
    array = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    return np.ascontiguousarray(array.astype(dtype, copy=False))


def deployed_spec(manifest: DeployedManifest, threads: int | None = None) -> BackendSpec:
    """The BackendSpec a model was deployed (and timed) with; `threads` overrides its CPU threads."""
    spec = manifest.backend_spec or BackendSpec(backend=manifest.backend, precision=manifest.precision)
    return spec if threads is None else BackendSpec.model_validate({**spec.model_dump(), "threads": threads})


def _file_runners(folder: Path, manifest: DeployedManifest, spec: BackendSpec) -> list[Any]:
    runners = []
    try:
        if spec.backend == "tensorrt":
            return [_trt_runner(folder / _graph_file(g.engine, g.name, "engine"), spec) for g in manifest.graphs]
        backend = spec.build()
        for g in manifest.graphs:
            runners.append(backend.load(folder / _graph_file(g.onnx, g.name, "ONNX file")))
    except SmnasError as e:
        for r in runners:
            r.close()
        raise DeployError(f"{folder}: cannot load on {spec.backend}: {e}") from e
    return runners


def _graph_file(name: str | None, graph: str, what: str) -> str:
    if name is None:
        raise DeployError(f"graph {graph} has no {what} in the manifest; deploy the model again")
    return name


def _trt_runner(engine_file: Path, spec: BackendSpec) -> Any:
    """A runner over a serialized engine file (the deployed copy, not the builder's cache)."""
    from smnas_trt.profiling.tensorrt_backend import TensorRTBackend, TensorRTRunner

    backend = spec.build()  # checks TensorRT, CUDA, registers plugins
    assert isinstance(backend, TensorRTBackend)
    import tensorrt as trt

    runtime = trt.Runtime(backend.logger)
    engine = runtime.deserialize_cuda_engine(engine_file.read_bytes())
    if engine is None:
        raise DeployError(f"{engine_file}: TensorRT could not deserialize the engine (built for another TensorRT "
                          "version or GPU?); deploy again on this machine")
    runner = TensorRTRunner(engine, layer_times=False)
    runner.runtime = runtime  # type: ignore[attr-defined]  # the runtime must outlive the engine
    return runner


def _torch_runners(specs: list[GraphSpec], spec: BackendSpec) -> list[Any]:
    backend = spec.build()
    return [backend.load_module(s.module, s.example_inputs) for s in specs]
