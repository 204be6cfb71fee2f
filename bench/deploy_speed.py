"""Deployed models on ONNX Runtime (CPU) vs PyTorch eager: `network` and `end2end` latency, ratios from one run.

For every model, in one process and one after the other on the same threads:
- ort-cpu: the deployed graph(s) (network) and the deployed runtime from prepared input to detections
  (end2end: graphs + torchvision decoding / proposal filtering / NMS), as `smnas deploy` times them;
- PyTorch eager: the same graph modules (network) and the detector's own forward (end2end: transform,
  network, decoding and NMS) on the same image.

Models: the deployed folders under --models (default demo_out/deployed), or --arch strings (random
weights; latency does not depend on them). Run it alone on the machine:

    flock /tmp/smnas-bench.lock .venv/bin/python bench/deploy_speed.py --models demo_out/deployed --threads 1
    flock /tmp/smnas-bench.lock .venv/bin/python bench/deploy_speed.py \
        --arch 128x128/r18_16_11-21-21-21/fpn:P3-P6:64/none/fcos:2x64
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from smnas_trt.deploy import DeployedManifest, Detector, read_manifest
from smnas_trt.deploy.decoder import Decoder, feature_sizes
from smnas_trt.deploy.manifest import MANIFEST_FORMAT, MANIFEST_VERSION, file_entries
from smnas_trt.models.graphs import detector_graphs
from smnas_trt.profiling.backends import torch_threads
from smnas_trt.profiling.fingerprint import cpu_model
from smnas_trt.profiling.spec import BackendSpec
from smnas_trt.profiling.timing import HostClock, TimingConfig, time_runs
from smnas_trt.space import parse

DEFAULT_ARCHS = (
    "128x128/r18_16_11-21-21-21/fpn:P3-P6:64/none/fcos:2x64",
    "128x128/r18_16_11-21-21-21/fpn:P3-P6:64/none/retina:2x64",
    "160x160/r34_24_111-2111-211111-211/fpn:P2-P5:64/rpn/2fc:128",
    "128x128/mbv2_0.35/fpn:P2-P5:48/rpn/cascade2:128",
)


def detector_from_arch(arch_text: str, work: Path, threads: int) -> tuple[Detector, Any]:
    """A Detector on ort-cpu for a randomly initialised arch (graphs exported into `work`), and the model."""
    from smnas_trt.models import build_detector
    from smnas_trt.profiling.export import export_onnx

    arch = parse(arch_text)
    torch.manual_seed(0)
    model = build_detector(arch, 11).eval()
    backend = BackendSpec(backend="ort-cpu", threads=threads).build()
    graphs, runners = [], []
    for spec in detector_graphs(model, arch):
        path = work / f"{arch.id}_{spec.name}.onnx"
        export_onnx(spec.module, spec.example_inputs, path, input_names=spec.input_names,
                    output_names=spec.output_names)
        graphs.append({"name": spec.name, "onnx": path.name, "inputs": spec.input_names,
                       "outputs": spec.output_names})
        runners.append(backend.load(path))
    # The manifest a deploy would write, less what only verification and timing add.
    manifest = DeployedManifest.model_validate({
        "format": MANIFEST_FORMAT, "version": MANIFEST_VERSION, "arch": arch_text, "arch_id": arch.id,
        "status": "ok", "backend": "ort-cpu", "precision": "fp32", "fingerprint": backend.fingerprint().to_dict(),
        "files": file_entries(work, [g["onnx"] for g in graphs]), "graphs": graphs,
        "feature_sizes": [list(s) for s in feature_sizes(model, arch)],
        "classes": {"label_to_cat": list(range(11)), "names": {}}, "verification": {}, "latency": {},
        "source": {"checkpoint": "(randomly initialised)"}})
    return Detector(work, manifest, copy.deepcopy(model), runners), model


def detector_from_folder(folder: Path, threads: int) -> tuple[Detector, Any]:
    """The deployed model (ort-cpu) and the trained PyTorch model it came from."""
    from smnas_trt.training import load_trained

    manifest = read_manifest(folder)
    if manifest.backend != "ort-cpu":
        raise SystemExit(f"{folder}: deployed for {manifest.backend}; this benchmark compares ort-cpu models")
    model, _ = load_trained(manifest.source.checkpoint)
    return Detector.load(folder, threads=threads), model.eval()


def eager_times(model: Any, arch_text: str, pixels: torch.Tensor, timing: TimingConfig, threads: int
                ) -> tuple[float, float]:
    """(network ms, end2end ms) of PyTorch eager on CPU: the graph modules, then the full forward."""
    arch = parse(arch_text)
    backend = BackendSpec(backend="torch", device="cpu", threads=threads).build()
    network = 0.0
    x = model.transform([pixels])[0].tensors
    specs = detector_graphs(model, arch)
    inputs: tuple[Any, ...] = (x,)
    for spec in specs:
        if spec.name == "roi":
            # The RoI graph on real proposals, as at inference (same count as the deployed graph gets).
            with torch.no_grad():
                outs = specs[0].module(x)
            det_model = copy.deepcopy(model)
            decoder = Decoder(det_model, arch, feature_sizes(model, arch))
            _, padded = decoder.proposals(outs[-2], outs[-1])
            inputs = (*outs[:-2], padded)
        runner = backend.load_module(spec.module, inputs)
        network += runner.time(timing).median_ms
        runner.close()
    with torch.inference_mode(), torch_threads(threads):
        end2end = time_runs(lambda: model([pixels]), timing, HostClock()).median_ms
    return network, end2end


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=Path, default=None, help="deploy output folder (all ort-cpu models in it)")
    parser.add_argument("--arch", action="append", default=[], help="arch string (random weights); repeatable")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads for both runtimes")
    parser.add_argument("--budget-s", type=float, default=2.0, help="timed-run budget per figure")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    timing = TimingConfig(warmup_runs=10, warmup_s=0.3, min_runs=20, max_runs=2000, budget_s=args.budget_s)

    folders: list[Path] = []
    archs: list[str] = list(args.arch)
    if args.models is not None or not archs:
        root = args.models or Path("demo_out/deployed")
        if root.is_dir():
            folders = sorted(p for p in root.iterdir() if (p / "manifest.json").is_file())
        if not folders and not archs:
            print(f"no deployed models in {root}; timing the default archs with random weights", file=sys.stderr)
            archs = list(DEFAULT_ARCHS)

    print(f"# deploy_speed: ort-cpu vs PyTorch eager, batch 1, {args.threads} threads, {cpu_model()}")
    print(f"# torch {torch.__version__}, timing budget {args.budget_s} s per figure, median ms")
    header = ("id", "arch", "ort net", "eager net", "net ratio", "ort e2e", "eager e2e", "e2e ratio")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    net_ratios, e2e_ratios = [], []
    with tempfile.TemporaryDirectory() as tmp:
        items: list[tuple[str, Any]] = [("folder", f) for f in folders] + [("arch", a) for a in archs]
        for kind, item in items:
            if kind == "folder":
                detector, model = detector_from_folder(item, args.threads)
            else:
                detector, model = detector_from_arch(item, Path(tmp), args.threads)
            arch_text = detector.manifest.arch
            pixels = torch.rand(3, detector.arch.size.height, detector.arch.size.width)
            timed = detector.time(pixels, timing)
            detector.close()
            eager_net, eager_e2e = eager_times(model, arch_text, pixels, timing, args.threads)
            ort_net, ort_e2e = timed["network_ms"], timed["end2end"].median_ms
            net_ratios.append(eager_net / ort_net)
            e2e_ratios.append(eager_e2e / ort_e2e)
            print(f"| {detector.manifest.arch_id} | `{arch_text}` | {ort_net:.2f} | {eager_net:.2f} | "
                  f"{net_ratios[-1]:.2f}x | {ort_e2e:.2f} | {eager_e2e:.2f} | {e2e_ratios[-1]:.2f}x |", flush=True)
    if net_ratios:
        print(f"# median speed-up of ort-cpu over eager: network {statistics.median(net_ratios):.2f}x, "
              f"end2end {statistics.median(e2e_ratios):.2f}x ({len(net_ratios)} models)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
