"""The manifest of a deployed model (`DIR/<arch id>/manifest.json`) and the table of all models in DIR.

A manifest lists every file of the model with its size and SHA-256; loading checks them, so a
truncated or altered engine is refused with a message naming the file instead of crashing later.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from smnas_trt.errors import DeployError
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
    """The manifest of a deployed model folder, checked for its format (not yet its file hashes)."""
    folder = Path(folder)
    path = folder / MANIFEST
    if not folder.is_dir():
        raise DeployError(f"deployed model folder not found: {folder}")
    if not path.is_file():
        raise DeployError(f"{folder} is not a deployed model (no {MANIFEST}); give a folder written by smnas deploy")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DeployError(f"{path}: not valid JSON ({e}); deploy the model again") from None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise DeployError(f"{path} is not an smnas deployed-model manifest")
    if int(manifest.get("version", 0)) != MANIFEST_VERSION:
        raise DeployError(f"{path}: manifest version {manifest.get('version')}, this smnas reads {MANIFEST_VERSION}")
    missing = [k for k in REQUIRED_KEYS if k not in manifest]
    if missing:
        raise DeployError(f"{path}: manifest lacks {', '.join(missing)}; deploy the model again")
    return manifest


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
            "network_ms": net.get("median_ms"), "end2end_ms": e2e.get("median_ms"),
            "predicted_ms": (lat.get("search") or {}).get("predicted_ms"),
            "predicted_scope": (lat.get("search") or {}).get("scope"),
            "match_share": m["verification"].get("match_share_iou_0.99"),
            "max_score_diff": m["verification"].get("max_score_diff"),
            "size_mb": sum(f["bytes"] for f in m["files"].values()) / 1e6,
            "folder": folder.name,
        })
    return rows


def write_index(root: Path) -> tuple[Path, Path]:
    """Rewrite DIR/models.json and DIR/models.md from the manifests under DIR."""
    rows = index_rows(root)
    atomic_write_json(root / INDEX_JSON, {"models": rows})
    lines = [
        "# Deployed models", "",
        "| id | arch | status | backend | precision | AP | AP50 | network ms | end2end ms | predicted ms "
        "| matched @IoU0.99 | max Δscore | MB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        predicted = "-" if r["predicted_ms"] is None else f"{r['predicted_ms']:.2f} ({r['predicted_scope']})"
        lines.append(
            f"| {r['arch_id']} | `{r['arch']}` | {r['status']} | {r['backend']} | {r['precision']} | "
            f"{_fmt(r['ap'], '.3f')} | {_fmt(r['ap50'], '.3f')} | {_fmt(r['network_ms'], '.2f')} | "
            f"{_fmt(r['end2end_ms'], '.2f')} | {predicted} | {_fmt(r['match_share'], '.1%')} | "
            f"{_fmt(r['max_score_diff'], '.2g')} | {r['size_mb']:.1f} |")
    atomic_write_text(root / INDEX_MD, "\n".join(lines) + "\n")
    return root / INDEX_JSON, root / INDEX_MD
