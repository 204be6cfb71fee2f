"""The manifest of a deployed model (`DIR/<arch id>/manifest.json`) and the table of all models in DIR.

A manifest lists every file of the model with its size and SHA-256; loading checks them, so a
truncated or altered engine is refused with a message naming the file instead of crashing later.
`DeployedManifest` is its schema: reading validates every field smnas uses (one line naming the
field when one is damaged), writing dumps the model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    Field,
    NonNegativeInt,
    PositiveInt,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from smnas_trt.errors import ArchError, DeployError, first_line, short_repr
from smnas_trt.fileio import StoredRecord, atomic_write_json, atomic_write_text, sha256_file
from smnas_trt.profiling.fingerprint import FingerprintRecord
from smnas_trt.profiling.spec import BackendName, BackendSpec, Precision
from smnas_trt.space import parse
from smnas_trt.space.config import pydantic_error_line

MANIFEST = "manifest.json"
INDEX_JSON = "models.json"
INDEX_MD = "models.md"
MANIFEST_FORMAT = "smnas-deployed-model"
MANIFEST_VERSION = 1


class _Record(StoredRecord):
    """A manifest record: timing statistics, verification details, scores and calibration beyond the fields
    below are kept as written. Writing dumps only the keys that were set, so a manifest read and written
    again is the same file."""


def _plain_name(name: str) -> str:
    # A plain name in the folder: a path here would make the hash check read files elsewhere.
    if not name or Path(name).name != name or name in (".", ".."):
        raise ValueError(f"file name {short_repr(name)} is not a plain name in the model folder")
    return name


FileName = Annotated[str, AfterValidator(_plain_name)]


class FileEntry(_Record):
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    bytes: NonNegativeInt


class Graph(_Record):
    """One graph of the model: its tensors' names in order and its files (none for the torch backend)."""

    name: str
    inputs: list[str]
    outputs: list[str]
    onnx: FileName | None = None
    engine: FileName | None = None


class Classes(_Record):
    label_to_cat: list[int] = Field(min_length=2)  # model label -> dataset category id (0: background)
    names: dict[Annotated[str, Field(pattern=r"^[0-9]+$")], str]  # category id -> name


class VerificationRecord(_Record):
    """`deploy.verify.Verification.to_dict()` and its settings; only `score_thresh` before verification."""

    score_thresh: float | None = None
    passed: bool | None = None
    failures: list[str] = Field(default_factory=list)
    compared: NonNegativeInt | None = None
    match_share_iou_0_99: float | None = Field(None, alias="match_share_iou_0.99")
    max_score_diff: float | None = None


class LatencyEntry(_Record):
    """`network` or `end2end` latency: timing statistics, and the search's prediction where comparable."""

    median_ms: float
    predicted_ms: float | None = None


class SearchRecord(_Record):
    """What the search run knew about the model (`DeployTarget.search`), and whether it timed what is deployed."""

    scope: str | None = None
    predicted_ms: float | None = None
    backend_spec: BackendSpec | None = None
    comparable: bool | None = None


class Latency(_Record):
    network: LatencyEntry | None = None  # all absent before timing
    end2end: LatencyEntry | None = None
    search: SearchRecord | None = None


class Scores(_Record):
    ap: float = Field(alias="AP")
    ap50: float = Field(alias="AP50")


class Accuracy(_Record):
    """COCO AP of the deployed model's own detections and of PyTorch (`deploy.score.score_deployed`)."""

    deployed: Scores
    pytorch: Scores
    delta_ap: float


class Source(_Record):
    checkpoint: str
    run: str | None = None


class DeployedManifest(_Record):
    format: Literal["smnas-deployed-model"]
    version: Literal[1]
    smnas_version: str | None = None
    created_at: str | None = None
    arch: str
    arch_id: str
    status: Literal["ok", "failed", "pending"]  # pending: written by deploy before verification
    ap: float | None = None  # the search's (or the given) AP of the trained model
    ap50: float | None = None
    backend: BackendName
    backend_version: str | None = None
    precision: Precision
    backend_spec: BackendSpec | None = None
    fingerprint: FingerprintRecord
    files: dict[FileName, FileEntry] = Field(min_length=1)
    graphs: list[Graph] = Field(min_length=1)
    feature_sizes: list[Annotated[list[PositiveInt], Field(min_length=2, max_length=2)]]  # [height, width]
    classes: Classes
    input: dict[str, Any] | None = None
    postprocess: dict[str, Any] | None = None
    verification: VerificationRecord
    latency: Latency
    accuracy: Accuracy | None = None
    calibration: dict[str, Any] | None = None  # int8
    source: Source

    @field_validator("arch")
    @classmethod
    def _parses(cls, arch: str) -> str:
        try:
            parse(arch)
        except ArchError as e:
            raise ValueError(str(e).removeprefix("arch: ")) from None
        return arch

    @field_validator("arch_id")
    @classmethod
    def _id_of_arch(cls, arch_id: str, info: ValidationInfo) -> str:
        if "arch" in info.data and arch_id != (expected := parse(info.data["arch"]).id):
            raise ValueError(f"{short_repr(arch_id)} is not the id of its arch ({expected})")
        return arch_id

    @field_validator("graphs")
    @classmethod
    def _files_listed(cls, graphs: list[Graph], info: ValidationInfo) -> list[Graph]:
        files = info.data.get("files")
        if files is None:  # damaged itself: reported as such
            return graphs
        for graph in graphs:
            for name in (graph.onnx, graph.engine):
                if name is not None and name not in files:
                    raise ValueError(f"{name} of graph {graph.name} is not listed in files")
        return graphs

    def size_bytes(self) -> int:
        return sum(f.bytes for f in self.files.values())


def file_entries(folder: Path, names: list[str]) -> dict[str, dict[str, Any]]:
    """{name: {sha256, bytes}} for files of a model folder."""
    return {name: {"sha256": sha256_file(folder / name), "bytes": (folder / name).stat().st_size} for name in names}


def write_manifest(folder: Path, manifest: DeployedManifest) -> Path:
    path = folder / MANIFEST
    atomic_write_json(path, manifest.model_dump(mode="json", by_alias=True, exclude_unset=True))
    return path


def read_manifest(folder: str | Path) -> DeployedManifest:
    """The manifest of a deployed model folder, checked for its format and fields (not yet its file hashes)."""
    folder = Path(folder)
    path = folder / MANIFEST
    if not folder.is_dir():
        raise DeployError(f"deployed model folder not found: {folder}")
    if not path.is_file():
        raise DeployError(f"{folder} is not a deployed model (no {MANIFEST}); give a folder written by smnas deploy")
    try:
        raw = json.loads(path.read_bytes().decode("utf-8"))
    except (ValueError, RecursionError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise DeployError(f"{path}: not valid JSON ({first_line(e, 120)}); deploy the model again") from None
    if not isinstance(raw, dict) or raw.get("format") != MANIFEST_FORMAT:
        raise DeployError(f"{path} is not an smnas deployed-model manifest")
    if raw.get("version") != MANIFEST_VERSION:
        raise DeployError(f"{path}: manifest version {short_repr(raw.get('version'))}, this smnas reads "
                          f"{MANIFEST_VERSION}")
    try:
        return DeployedManifest.model_validate(raw)
    except ValidationError as e:
        raise DeployError(f"{path}: damaged manifest ({pydantic_error_line(e)}); deploy the model again") from None


def check_files(folder: str | Path, manifest: DeployedManifest) -> None:
    """Every file the manifest lists exists with its recorded size and SHA-256, else DeployError."""
    folder = Path(folder)
    for name, entry in manifest.files.items():
        path = folder / name
        if not path.is_file():
            raise DeployError(f"{path}: file listed in the manifest is missing; deploy the model again")
        size = path.stat().st_size
        if size != entry.bytes:
            raise DeployError(f"{path}: corrupted model file ({size} bytes, the manifest says {entry.bytes}); "
                              "deploy the model again")
        digest = sha256_file(path)
        if digest != entry.sha256:
            raise DeployError(f"{path}: corrupted model file (SHA-256 {digest[:12]}..., the manifest says "
                              f"{entry.sha256[:12]}...); deploy the model again")


def _fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def index_rows(root: Path) -> list[dict[str, Any]]:
    """One row per deployed model folder under `root` (folders without a readable manifest are skipped)."""
    rows = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        try:
            m = read_manifest(folder)
        except DeployError:
            continue
        lat, ver, accuracy = m.latency, m.verification, m.accuracy
        rows.append({
            "arch_id": m.arch_id, "arch": m.arch, "status": m.status, "backend": m.backend,
            "precision": m.precision, "ap": m.ap, "ap50": m.ap50,
            "ap_deployed": accuracy.deployed.ap if accuracy else None,
            "ap50_deployed": accuracy.deployed.ap50 if accuracy else None,
            "ap_pytorch": accuracy.pytorch.ap if accuracy else None,
            "delta_ap": accuracy.delta_ap if accuracy else None,
            "network_ms": lat.network.median_ms if lat.network else None,
            "end2end_ms": lat.end2end.median_ms if lat.end2end else None,
            "predicted_ms": lat.search.predicted_ms if lat.search else None,
            "predicted_scope": lat.search.scope if lat.search else None,
            "match_share": ver.match_share_iou_0_99, "max_score_diff": ver.max_score_diff,
            "size_mb": m.size_bytes() / 1e6,
            "folder": folder.name,
        })
    return rows


def write_index(root: Path) -> tuple[Path, Path]:
    """Rewrite DIR/models.json and DIR/models.md from the manifests under DIR."""
    rows = index_rows(root)
    atomic_write_json(root / INDEX_JSON, {"models": rows})
    lines = [
        "# Deployed models", "",
        "| id | arch | status | backend | precision | AP | AP50 | AP (deployed) | ΔAP | network ms | end2end ms "
        "| predicted ms | matched @IoU0.99 | max Δscore | MB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        predicted = "-" if r["predicted_ms"] is None else f"{r['predicted_ms']:.2f} ({r['predicted_scope']})"
        lines.append(
            f"| {r['arch_id']} | `{r['arch']}` | {r['status']} | {r['backend']} | {r['precision']} | "
            f"{_fmt(r['ap'], '.3f')} | {_fmt(r['ap50'], '.3f')} | {_fmt(r['ap_deployed'], '.3f')} | "
            f"{_fmt(r['delta_ap'], '+.3f')} | {_fmt(r['network_ms'], '.2f')} | "
            f"{_fmt(r['end2end_ms'], '.2f')} | {predicted} | {_fmt(r['match_share'], '.1%')} | "
            f"{_fmt(r['max_score_diff'], '.2g')} | {r['size_mb']:.1f} |")
    atomic_write_text(root / INDEX_MD, "\n".join(lines) + "\n")
    return root / INDEX_JSON, root / INDEX_MD
