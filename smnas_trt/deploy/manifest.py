"""The manifest of a deployed model (`DIR/<arch id>/manifest.json`) and the table of all models in DIR.

A manifest lists every file of the model with its size and SHA-256; loading checks them, so a
truncated or altered engine is refused with a message naming the file instead of crashing later.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from smnas_trt.errors import DeployError, first_line, short_repr
from smnas_trt.fileio import atomic_write_json, atomic_write_text, sha256_file

MANIFEST = "manifest.json"
INDEX_JSON = "models.json"
INDEX_MD = "models.md"
MANIFEST_FORMAT = "smnas-deployed-model"
MANIFEST_VERSION = 1
REQUIRED_KEYS = ("format", "version", "arch", "arch_id", "status", "backend", "precision", "files", "graphs",
                 "verification", "latency", "fingerprint", "classes")


def file_entries(folder: Path, names: list[str]) -> dict[str, dict[str, Any]]:
    """{name: {sha256, bytes}} for files of a model folder."""
    return {name: {"sha256": sha256_file(folder / name), "bytes": (folder / name).stat().st_size} for name in names}


def write_manifest(folder: Path, manifest: dict[str, Any]) -> Path:
    missing = [k for k in REQUIRED_KEYS if k not in manifest]
    if missing:
        raise DeployError(f"manifest for {folder}: missing fields {missing}")
    path = folder / MANIFEST
    atomic_write_json(path, manifest)
    return path


def read_manifest(folder: str | Path) -> dict[str, Any]:
    """The manifest of a deployed model folder, checked for its format and fields (not yet its file hashes)."""
    folder = Path(folder)
    path = folder / MANIFEST
    if not folder.is_dir():
        raise DeployError(f"deployed model folder not found: {folder}")
    if not path.is_file():
        raise DeployError(f"{folder} is not a deployed model (no {MANIFEST}); give a folder written by smnas deploy")
    try:
        manifest = json.loads(path.read_bytes().decode("utf-8"))
    except (ValueError, RecursionError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise DeployError(f"{path}: not valid JSON ({first_line(e, 120)}); deploy the model again") from None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise DeployError(f"{path} is not an smnas deployed-model manifest")
    if manifest.get("version") != MANIFEST_VERSION:
        raise DeployError(f"{path}: manifest version {short_repr(manifest.get('version'))}, this smnas reads "
                          f"{MANIFEST_VERSION}")
    missing = [k for k in REQUIRED_KEYS if k not in manifest]
    if missing:
        raise DeployError(f"{path}: manifest lacks {', '.join(missing)}; deploy the model again")
    problem = _schema_problem(manifest)
    if problem:
        raise DeployError(f"{path}: damaged manifest ({problem}); deploy the model again")
    return manifest


def _number_or_none(value: Any) -> bool:
    if value is None:
        return True
    if not isinstance(value, int | float) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an integer too large for a float
        return False


def _strings(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _schema_problem(m: dict[str, Any]) -> str | None:
    """What is wrong with the fields the loader, the runtime and the index read, or None."""
    from smnas_trt.errors import ArchError
    from smnas_trt.space import parse

    if not isinstance(m["arch"], str):
        return "arch is not a string"
    try:
        arch_id = parse(m["arch"]).id
    except ArchError as e:
        return f"arch does not parse: {e}"
    if m["arch_id"] != arch_id:
        return f"arch_id {short_repr(m['arch_id'])} is not the id of its arch ({arch_id})"
    if m["status"] not in ("ok", "failed", "pending"):  # pending: written by deploy before verification
        return f"status {short_repr(m['status'])}"
    if not (isinstance(m["backend"], str) and isinstance(m["precision"], str)):
        return "backend or precision is not a string"
    files = m["files"]
    if not isinstance(files, dict) or not files:
        return "files is not a list of files"
    for name, entry in files.items():
        # A plain name in the folder: a path here would make the hash check read files elsewhere.
        if not name or Path(name).name != name or name in (".", ".."):
            return f"file name {short_repr(name)}"
        if not (isinstance(entry, dict) and isinstance(entry.get("sha256"), str) and len(entry["sha256"]) == 64
                and isinstance(entry.get("bytes"), int) and not isinstance(entry["bytes"], bool)
                and entry["bytes"] >= 0):
            return f"files entry of {short_repr(name)} needs sha256 and bytes"
    graphs = m["graphs"]
    if not (isinstance(graphs, list) and graphs and all(
            isinstance(g, dict) and isinstance(g.get("name"), str) and _strings(g.get("inputs"))
            and _strings(g.get("outputs")) and all(g.get(k) is None or g[k] in files for k in ("onnx", "engine"))
            for g in graphs)):
        return "graphs needs name, inputs, outputs and files listed in files"
    sizes = m.get("feature_sizes")
    if not (isinstance(sizes, list) and all(isinstance(s, list) and len(s) == 2 and all(
            isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in s) for s in sizes)):
        return "feature_sizes is not a list of [height, width]"
    classes = m["classes"]
    if not (isinstance(classes, dict) and isinstance(classes.get("label_to_cat"), list)
            and len(classes["label_to_cat"]) >= 2
            and all(isinstance(c, int) and not isinstance(c, bool) for c in classes["label_to_cat"])
            and isinstance(classes.get("names"), dict)
            and all(k.isdigit() and isinstance(v, str) for k, v in classes["names"].items())):
        return "classes needs label_to_cat and names"
    verification = m["verification"]
    if not (isinstance(verification, dict) and _strings(verification.get("failures", []))
            and all(_number_or_none(verification.get(k)) for k in ("match_share_iou_0.99", "max_score_diff"))):
        return "verification"
    latency = m["latency"]
    if not isinstance(latency, dict):
        return "latency is not an object"
    for scope in ("network", "end2end", "search"):
        entry = latency.get(scope)
        if entry is not None and not (isinstance(entry, dict) and all(
                _number_or_none(entry.get(k)) for k in ("median_ms", "predicted_ms"))):
            return f"latency.{scope}"
    if not (isinstance(m["fingerprint"], dict) and all(_number_or_none(m.get(k)) for k in ("ap", "ap50"))):
        return "fingerprint, ap or ap50"
    if not (m.get("device") is None or isinstance(m["device"], str)):
        return "device"
    return None


def check_files(folder: str | Path, manifest: dict[str, Any]) -> None:
    """Every file the manifest lists exists with its recorded size and SHA-256, else DeployError."""
    folder = Path(folder)
    for name, entry in manifest["files"].items():
        path = folder / name
        if not path.is_file():
            raise DeployError(f"{path}: file listed in the manifest is missing; deploy the model again")
        size = path.stat().st_size
        if size != entry["bytes"]:
            raise DeployError(f"{path}: corrupted model file ({size} bytes, the manifest says {entry['bytes']}); "
                              "deploy the model again")
        digest = sha256_file(path)
        if digest != entry["sha256"]:
            raise DeployError(f"{path}: corrupted model file (SHA-256 {digest[:12]}..., the manifest says "
                              f"{entry['sha256'][:12]}...); deploy the model again")


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
        lat = m["latency"]
        net, e2e = lat.get("network") or {}, lat.get("end2end") or {}
        rows.append({
            "arch_id": m["arch_id"], "arch": m["arch"], "status": m["status"], "backend": m["backend"],
            "precision": m["precision"], "ap": m.get("ap"), "ap50": m.get("ap50"),
            "ap_deployed": _accuracy(m, "deployed", "AP"), "ap50_deployed": _accuracy(m, "deployed", "AP50"),
            "ap_pytorch": _accuracy(m, "pytorch", "AP"), "delta_ap": _accuracy(m, "delta_ap"),
            "network_ms": net.get("median_ms"), "end2end_ms": e2e.get("median_ms"),
            "predicted_ms": (lat.get("search") or {}).get("predicted_ms"),
            "predicted_scope": (lat.get("search") or {}).get("scope"),
            "match_share": m["verification"].get("match_share_iou_0.99"),
            "max_score_diff": m["verification"].get("max_score_diff"),
            "size_mb": sum(f["bytes"] for f in m["files"].values()) / 1e6,
            "folder": folder.name,
        })
    return rows


def _accuracy(m: dict[str, Any], *keys: str) -> float | None:
    """A figure of the manifest's `accuracy` record (the deployed model's own AP), None where absent."""
    value: Any = m.get("accuracy")
    for key in keys:
        value = value.get(key) if isinstance(value, dict) else None
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


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
