"""Property-based tests of every parser and reader of user input (Hypothesis).

The property, for each input: it loads to a valid object, or it raises an SmnasError whose message is
exactly one line. Any other exception is a bug (the CLI would print a traceback instead of one line).

Inputs are arbitrary text and mutations of real, valid inputs: arch strings sampled from the built-in
spaces, the built-in space and search YAMLs, COCO JSON from `generate_demo`, and a latency table,
predictor folder, checkpoint and deployed model that the real code writes once per module.

Each property runs twice: a default test with a small fixed budget (derandomized, so CI is
reproducible) and a `slow` variant with 20 times the examples (`pytest -m slow tests/test_fuzz_inputs.py`).
Examples found by Hypothesis are kept as plain regression tests in the files of the code they broke.
"""

from __future__ import annotations

import copy
import json
import math
import random
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from hypothesis import HealthCheck, currently_in_test_context, event, given, settings
from hypothesis import strategies as st

from smnas_trt.errors import SmnasError
from smnas_trt.space import SearchSpace, load_space, load_space_config, parse
from smnas_trt.space.config import BUILTIN_SPACES

SLOW_FACTOR = 20
BASE = settings(deadline=None, derandomize=True, database=None, print_blob=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])


def fuzz(examples: int, *strategies: st.SearchStrategy[Any]) -> Callable[[Callable[..., None]], Any]:
    """`test_x, test_x_slow = fuzz(N, strategy)(check)`: the default test and its slow variant (20 x N)."""

    def decorate(check: Callable[..., None]) -> tuple[Any, Any]:
        default = settings(BASE, max_examples=examples)(given(*strategies)(check))
        slow = pytest.mark.slow(settings(BASE, max_examples=examples * SLOW_FACTOR)(given(*strategies)(check)))
        return default, slow

    return decorate


def assert_one_line(e: BaseException) -> None:
    assert isinstance(e, SmnasError), f"{type(e).__name__} is not an SmnasError: {e}"
    message = str(e)
    assert message.strip(), f"{type(e).__name__} has an empty message"
    assert len(message.splitlines()) == 1, f"message is not one line: {message!r}"
    if currently_in_test_context():  # the share refused / loaded, shown by --hypothesis-show-statistics
        event(f"refused ({type(e).__name__})")


def loaded() -> None:
    if currently_in_test_context():
        event("loaded")


# ------------------------------------------------------------------------------------------ strategies
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 3), st.integers(), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12), st.sampled_from(["", "1", "abc", "800x600", "fpn:P2-P5", "network", "\n", "NaN"]),
)
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6),
                                                                                           inner, max_size=3),
                      max_leaves=6)


def _numbers_near(v: float) -> list[Any]:
    out = [0, -1, 1, -v, math.nan, math.inf, -math.inf, 1e308, 2**63, 10**40, 10**400, str(v), True]
    return [*out, v * 1000, v + 0.5] if abs(v) < 1e300 else out


def _slots(obj: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Paths of every value inside a JSON-like object (the root is the empty path)."""
    yield path
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _slots(v, (*path, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _slots(v, (*path, i))


def _get(obj: Any, path: tuple[Any, ...]) -> Any:
    for key in path:
        obj = obj[key]
    return obj


@st.composite
def mutated_data(draw: st.DrawFn, base: Any, max_edits: int = 3) -> Any:
    """A deep copy of `base` with 1..max_edits edits: delete, replace, retype, misspell a key, duplicate, add."""
    obj = copy.deepcopy(base)
    for _ in range(draw(st.integers(1, max_edits))):
        path = draw(st.sampled_from(list(_slots(obj))))
        if not path:
            if draw(st.booleans()):
                obj = draw(VALUES)  # the whole document replaced
            continue
        parent, key = _get(obj, path[:-1]), path[-1]
        value = parent[key]
        op = draw(st.sampled_from(["delete", "replace", "number", "misspell", "duplicate", "add"]))
        if op == "delete":
            del parent[key]
        elif op == "replace":
            parent[key] = draw(VALUES)
        elif op == "number":
            parent[key] = draw(st.sampled_from(_numbers_near(value if isinstance(value, int | float)
                                                             and not isinstance(value, bool) else 7)))
        elif op == "misspell" and isinstance(parent, dict) and isinstance(key, str) and key:
            i = draw(st.integers(0, len(key) - 1))
            typo = key[:i] + draw(st.sampled_from(["", "x", key[i] * 2, "_"])) + key[i + 1:]
            parent[typo] = parent.pop(key)
        elif op == "duplicate" and isinstance(value, list) and value:
            value.append(copy.deepcopy(value[draw(st.integers(0, len(value) - 1))]))
        elif op == "add" and isinstance(value, dict):
            value[draw(st.text(max_size=8))] = draw(VALUES)
        elif op == "add" and isinstance(value, list):
            value.insert(draw(st.integers(0, len(value))), draw(VALUES))
    return obj


@st.composite
def mutated_bytes(draw: st.DrawFn, base: bytes) -> bytes:
    """`base` truncated, bit-flipped, overwritten, with bytes inserted or a range deleted."""
    data = bytearray(base)
    for _ in range(draw(st.integers(1, 3))):
        if not data:
            break
        op = draw(st.sampled_from(["truncate", "flip", "flip", "overwrite", "insert", "delete"]))
        i = draw(st.integers(0, len(data) - 1))
        if op == "truncate":
            del data[i:]
        elif op == "flip":
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "overwrite":
            chunk = draw(st.binary(min_size=1, max_size=16))
            data[i:i + len(chunk)] = chunk
        elif op == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=16))
        else:
            del data[i:i + draw(st.integers(1, 64))]
    return bytes(data)


# ------------------------------------------------------------------------------------------ arch strings
def _valid_arch_strings() -> list[str]:
    rng = random.Random(0)
    out = ["800x600/r50_64_111-2111-211111-211/fpn:P2-P5:256/rpn/cascade3",
           "128x128/x50(32x4d)_16_11-21-21-21/none:C5/none/retina:1x32",
           "128x128/mbv2_0.5/none:C4/none/fcos:2x64", "1333x800/mbv2_1.4/fpn:P2-P5:128/rpn/2fc:512"]
    for name in ("tiny", "demo", "paper"):
        space = load_space(name)
        out += [str(space.sample_arch(rng)) for _ in range(8)] + [str(space.sample_structure(rng)) for _ in range(4)]
    return out


VALID_ARCHS = _valid_arch_strings()
ARCH_ALPHABET = "0123456789x/_-:.()rpnfcosatiembvCPd2 "


@st.composite
def mutated_arch(draw: st.DrawFn) -> str:
    text = draw(st.sampled_from(VALID_ARCHS))
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["number", "number", "char", "insert", "delete", "swap_field"]))
        if op == "number":
            runs = list(re.finditer(r"\d+(?:\.\d+)?", text))
            m = draw(st.sampled_from(runs))
            new = draw(st.one_of(st.integers(0, 20_000).map(str), st.integers(0, 10**30).map(str),
                                 st.floats(0, 3, allow_nan=False).map(lambda f: f"{f:.3f}"),
                                 st.sampled_from(["0", "00", "1" * 5000, "٣٢", "1e3", "-1", "0.0"])))
            text = text[:m.start()] + new + text[m.end():]
        elif op == "char" and text:
            i = draw(st.integers(0, len(text) - 1))
            text = text[:i] + draw(st.sampled_from(ARCH_ALPHABET)) + text[i + 1:]
        elif op == "insert":
            i = draw(st.integers(0, len(text)))
            text = text[:i] + draw(st.text(ARCH_ALPHABET, min_size=1, max_size=4)) + text[i:]
        elif op == "delete" and text:
            i = draw(st.integers(0, len(text) - 1))
            text = text[:i] + text[i + draw(st.integers(1, 4)):]
        else:
            fields, other = text.split("/"), draw(st.sampled_from(VALID_ARCHS)).split("/")
            if len(fields) == 5:
                i = draw(st.integers(0, 4))
                fields[i] = other[i]
                text = "/".join(fields)
    return text


def check_arch_text(text: str) -> None:
    try:
        arch = parse(text)
    except SmnasError as e:
        assert_one_line(e)
        return
    loaded()
    canonical = str(arch)
    again = parse(canonical)
    assert again == arch, f"{text!r} -> {canonical!r} parses to another arch"
    assert str(again) == canonical and again.id == arch.id


test_arch_arbitrary_text, test_arch_arbitrary_text_slow = fuzz(
    300, st.one_of(st.text(), st.text(ARCH_ALPHABET, max_size=80)))(check_arch_text)
test_arch_mutated, test_arch_mutated_slow = fuzz(400, mutated_arch())(check_arch_text)


# ------------------------------------------------------------------------------------------ space configs
SPACE_YAMLS = {name: path.read_text() for name, path in BUILTIN_SPACES.items()}
SPACE_DATA = [yaml.safe_load(text) for text in SPACE_YAMLS.values()]


def check_space_file(path: Path) -> None:
    try:
        config = load_space_config(path)
    except SmnasError as e:
        assert_one_line(e)
        return
    loaded()
    # A config that loads is a space that samples architectures inside itself.
    space = SearchSpace(config)
    rng = random.Random(0)
    for _ in range(3):
        for arch in (space.sample_structure(rng), space.sample_arch(rng)):
            assert space.check(parse(str(arch))) == arch
            try:
                child = space.mutate(arch, rng)
            except SmnasError as e:  # every gene with a single option: nothing to mutate
                assert_one_line(e)
            else:
                assert space.check(child) == child


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One folder per module for the files each example writes (examples run one after another)."""
    return tmp_path_factory.mktemp("fuzz")


def _write_space(scratch: Path, data: bytes) -> Path:
    path = scratch / "space.yaml"
    path.write_bytes(data)
    return path


def check_space_data(scratch: Path, data: Any) -> None:
    check_space_file(_write_space(scratch, yaml.safe_dump(data, allow_unicode=True).encode()))


def check_space_bytes(scratch: Path, data: bytes) -> None:
    check_space_file(_write_space(scratch, data))


test_space_yaml_mutated, test_space_yaml_mutated_slow = fuzz(
    300, st.sampled_from(SPACE_DATA).flatmap(mutated_data))(check_space_data)
test_space_yaml_bytes, test_space_yaml_bytes_slow = fuzz(
    100, st.sampled_from([t.encode() for t in SPACE_YAMLS.values()]).flatmap(mutated_bytes))(check_space_bytes)


# ------------------------------------------------------------------------------------------ search configs
SEARCH_YAML = (Path(__file__).resolve().parent.parent / "smnas_trt" / "configs" / "search_demo.yaml").read_text()
SEARCH_DATA = yaml.safe_load(SEARCH_YAML)


def check_search_config(config: Any) -> None:
    """A loaded search config freezes to YAML that loads back to itself, and its sub-configs build."""
    from smnas_trt.predictors.predictor import FitConfig
    from smnas_trt.profiling.timing import TimingConfig
    from smnas_trt.search.config import parse_search_config
    from smnas_trt.training.trainer import TrainConfig

    loaded()
    # Compared as JSON text: a NaN in the unchecked sections (below) would make == fail on itself.
    again = parse_search_config(yaml.safe_load(config.to_yaml()))
    assert json.dumps(again.frozen_dict(), sort_keys=True) == json.dumps(config.frozen_dict(), sort_keys=True)
    assert len(config.digest()) == 64
    assert config.stage_plan()
    # The sections are typed models, checked when the config loads (not when a candidate trains).
    assert isinstance(config.latency.predictor_fit, FitConfig) and isinstance(config.latency.timing, TimingConfig)
    assert isinstance(config.training, TrainConfig)


def check_search_mapping(raw: Any) -> None:
    from smnas_trt.search.config import parse_search_config

    try:
        config = parse_search_config(raw, "search.yaml")
    except SmnasError as e:
        assert_one_line(e)
        return
    check_search_config(config)


def check_search_bytes(scratch: Path, data: bytes) -> None:
    from smnas_trt.search.config import load_search_config

    path = scratch / "search.yaml"
    path.write_bytes(data)
    try:
        config = load_search_config(path)
    except SmnasError as e:
        assert_one_line(e)
        return
    check_search_config(config)


test_search_mapping_mutated, test_search_mapping_mutated_slow = fuzz(
    200, mutated_data(SEARCH_DATA))(check_search_mapping)
test_search_yaml_bytes, test_search_yaml_bytes_slow = fuzz(
    100, mutated_bytes(SEARCH_YAML.encode()))(check_search_bytes)


# ------------------------------------------------------------------------------------------ COCO JSON
@pytest.fixture(scope="module")
def demo_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from smnas_trt.data import generate_demo

    return generate_demo(tmp_path_factory.mktemp("coco") / "demo", n_train=2, n_val=3, size=64, seed=0)


@pytest.fixture(scope="module")
def coco_root(demo_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A dataset folder whose instances_val.json each example rewrites (images shared with demo_data)."""
    root = tmp_path_factory.mktemp("coco_fuzz")
    (root / "val").symlink_to(demo_data / "val")
    return root


COCO_SIZE = (64, 48)


def check_coco_bytes(root: Path, data: bytes) -> None:
    """A split that loads has usable boxes inside their images, and every item is a well-formed target."""
    from smnas_trt.data import CocoDetection

    (root / "instances_val.json").write_bytes(data)
    try:
        ds = CocoDetection(root, "val", COCO_SIZE)
        items = [ds[i] for i in range(len(ds))]
    except SmnasError as e:
        assert_one_line(e)
        return
    loaded()
    assert len(ds) >= 1 and ds.num_categories >= 1
    usable = 0
    for ann in ds.coco.dataset["annotations"]:
        x, y, w, h = ann["bbox"]
        img = ds.coco.imgs[ann["image_id"]]
        assert all(type(v) in (int, float) and math.isfinite(v) for v in (x, y, w, h)), ann
        assert w >= 1 and h >= 1 and x >= 0 and y >= 0, ann
        assert x + w <= img["width"] + 1e-6 and y + h <= img["height"] + 1e-6, ann
        assert ann["iscrowd"] in (0, 1) and math.isfinite(ann["area"]) and ann["area"] >= 0, ann
        usable += not ann["iscrowd"]
    assert usable >= 1
    width, height = COCO_SIZE
    for image, target in items:
        assert image.shape == (3, height, width)
        boxes = target["boxes"]
        assert torch.isfinite(boxes).all()
        assert ((boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])).all()
        assert (boxes >= 0).all() and (boxes[:, 0::2] <= width).all() and (boxes[:, 1::2] <= height).all()
        assert ((target["labels"] >= 1) & (target["labels"] <= ds.num_categories)).all()


def check_coco_mutated(coco_root: Path, demo_data: Path, data: st.DataObject) -> None:
    raw = data.draw(mutated_data(json.loads((demo_data / "instances_val.json").read_text())))
    check_coco_bytes(coco_root, json.dumps(raw).encode())


def check_coco_damaged(coco_root: Path, demo_data: Path, data: st.DataObject) -> None:
    check_coco_bytes(coco_root, data.draw(mutated_bytes((demo_data / "instances_val.json").read_bytes())))


test_coco_json_mutated, test_coco_json_mutated_slow = fuzz(400, st.data())(check_coco_mutated)
test_coco_json_bytes, test_coco_json_bytes_slow = fuzz(200, st.data())(check_coco_damaged)


# ------------------------------------------------------------------------------------------ latency tables
LUT_ARCHS = VALID_ARCHS[:24]


def _synthetic_ms(arch: str) -> float:
    """A plausible latency: a fixed cost plus a cost per FLOP (the predictor fits such data well)."""
    from smnas_trt.predictors.analytic import arch_counts

    return 0.5 + 2e-9 * arch_counts(parse(arch), 81)["total"]["flops"]


@pytest.fixture(scope="module")
def lut_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real latency table: whole-model and module rows written through the profiling layer's API."""
    from smnas_trt.models.piece_keys import arch_piece_keys
    from smnas_trt.profiling.fingerprint import cpu_fingerprint
    from smnas_trt.profiling.lut import LatencyTable
    from smnas_trt.profiling.timing import summarize

    path = tmp_path_factory.mktemp("lut") / "lut.db"
    with LatencyTable.create(path, cpu_fingerprint("ort-cpu", "1.20.1", threads=1)) as table:
        for arch in LUT_ARCHS:
            ms = _synthetic_ms(arch)
            table.put_model(arch, "network", summarize([ms * f for f in (0.98, 1.0, 1.01, 1.05)]),
                            {"passes": [ms, ms * 1.01]})
        for kind, key in arch_piece_keys(parse(LUT_ARCHS[0]), 81):
            table.put_module(key, kind, {"kind": kind}, summarize([0.1, 0.11, 0.12]), {"onnx_bytes": 1234})
    return path


def _check_stats(stats: Any) -> None:
    values = [getattr(stats, name) for name in ("median_ms", "p10_ms", "p90_ms", "mean_ms", "std_ms", "min_ms",
                                                "max_ms")]
    assert all(type(v) is float and math.isfinite(v) and v >= 0 for v in values), stats
    assert type(stats.n) is int and stats.n >= 1, stats


def check_lut_bytes(scratch: Path, data: bytes) -> None:
    from smnas_trt.profiling.lut import LatencyTable

    path = scratch / "lut.db"
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    path.write_bytes(data)
    try:
        with LatencyTable.open(path) as table:
            device = table.fingerprint.describe()
            key = table.fingerprint.key
            models, modules = table.model_rows(), table.module_rows()
            network = table.model_rows("network")
            latencies = table.module_latencies()
            summary = table.summary()
            table.export_csv(scratch / "lut.csv")
    except SmnasError as e:
        assert_one_line(e)
        return
    loaded()
    assert isinstance(device, str) and len(key) == 12 and summary["counts"]["models"] == len(models)
    assert len(network) <= len(models)
    for row in models:
        assert isinstance(row.arch, str) and row.scope in ("network", "end2end") and isinstance(row.extra, dict)
        _check_stats(row.stats)
    for module in modules:
        assert isinstance(module.key, str) and isinstance(module.config, dict) and isinstance(module.extra, dict)
        _check_stats(module.stats)
    assert all(isinstance(k, str) and type(v) is float for k, v in latencies.items())


def check_lut_damaged(lut_file: Path, scratch: Path, data: st.DataObject) -> None:
    check_lut_bytes(scratch, data.draw(mutated_bytes(lut_file.read_bytes())))


test_lut_damaged, test_lut_damaged_slow = fuzz(300, st.data())(check_lut_damaged)


# ------------------------------------------------------------------------------------------ predictors
PREDICT_ARCHS = VALID_ARCHS[24:27]


@pytest.fixture(scope="module")
def predictor_dir(lut_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A predictor fitted by the real code on the real table above (small settings: it takes a second)."""
    from smnas_trt.predictors import FitConfig, fit_predictor

    out = tmp_path_factory.mktemp("predictor") / "model"
    fit_predictor(lut_file, out, FitConfig(folds=2, rounds=10, scale_rounds=5, threads=1))
    return out


PREDICTOR_FILES = ("predictor.json", "mean.ubj", "scale.ubj", "modules.json")


def check_predictor_folder(folder: Path) -> None:
    from smnas_trt.predictors import LatencyPredictor

    try:
        predictor = LatencyPredictor.load(folder)
        text = predictor.describe()
        ms, lower, upper = predictor.predict_interval(PREDICT_ARCHS)
        _, uncertainty = predictor.predict(PREDICT_ARCHS)
    except SmnasError as e:
        assert_one_line(e)
        return
    loaded()
    assert isinstance(text, str) and len(text.splitlines()) == 1
    assert ms.shape == lower.shape == upper.shape == uncertainty.shape == (len(PREDICT_ARCHS),)
    assert not np.isnan(ms).any() and (ms >= 0).all()


def check_predictor_mutated(predictor_dir: Path, scratch: Path, data: st.DataObject) -> None:
    """predictor.json edited (fields, or bytes), or another file damaged with or without a matching checksum."""
    import hashlib

    files = {name: (predictor_dir / name).read_bytes() for name in PREDICTOR_FILES}
    how = data.draw(st.sampled_from(["meta", "meta_bytes", "file", "file_resigned"]))
    if how == "meta":
        meta = data.draw(mutated_data(json.loads(files["predictor.json"])))
        files["predictor.json"] = json.dumps(meta).encode()
    elif how == "meta_bytes":
        files["predictor.json"] = data.draw(mutated_bytes(files["predictor.json"]))
    else:
        name = data.draw(st.sampled_from(PREDICTOR_FILES[1:]))
        files[name] = data.draw(mutated_bytes(files[name]))
        if how == "file_resigned":  # damaged after its checksum was written: the loader must still cope
            meta = json.loads(files["predictor.json"])
            meta["files"][name] = hashlib.sha256(files[name]).hexdigest()
            files["predictor.json"] = json.dumps(meta).encode()
    folder = scratch / "predictor"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    for name, content in files.items():
        (folder / name).write_bytes(content)
    check_predictor_folder(folder)


test_predictor_mutated, test_predictor_mutated_slow = fuzz(300, st.data())(check_predictor_mutated)


# ------------------------------------------------------------------------------------------ checkpoints
CKPT_ARCH = "64x64/r18_8_11-21-21-21/none:C4/none/fcos:1x16"


@pytest.fixture(scope="module")
def checkpoint(demo_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real checkpoint: one epoch of a tiny detector on the generated data."""
    from smnas_trt.training import TrainConfig, train_arch

    torch.manual_seed(0)
    result = train_arch(CKPT_ARCH, demo_data, tmp_path_factory.mktemp("train"),
                        TrainConfig(epochs=1, batch_size=2, warmup_iters=1, progress=False))
    return result.checkpoint


def check_checkpoint_file(path: Path) -> None:
    from smnas_trt.training import load_checkpoint
    from smnas_trt.training.arch import load_trained

    try:
        ckpt = load_checkpoint(path)
        model, meta = load_trained(path)
    except SmnasError as e:
        assert_one_line(e)
        return
    loaded()
    assert isinstance(ckpt["epoch"], int) and isinstance(ckpt["model"], dict)
    assert not model.training and isinstance(meta["arch"], str)


def check_checkpoint_mutated(checkpoint: Path, scratch: Path, data: st.DataObject) -> None:
    path = scratch / "last.pt"
    if data.draw(st.booleans()):
        path.write_bytes(data.draw(mutated_bytes(checkpoint.read_bytes())))
    else:  # a well-formed file with other contents
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        light = {k: v for k, v in state.items() if k not in ("optimizer", "model")}
        edited = data.draw(mutated_data(light))
        if isinstance(edited, dict):
            edited = {**{k: state[k] for k in ("optimizer", "model") if k in state}, **edited}
            if data.draw(st.booleans()) and isinstance(edited.get("model"), dict):
                model = dict(edited["model"])
                name = data.draw(st.sampled_from(sorted(model)))
                model[name] = data.draw(st.sampled_from([torch.zeros(3), torch.zeros(0), 1.5, "x"]))
                edited["model"] = model
        torch.save(edited, path)
    check_checkpoint_file(path)


test_checkpoint_mutated, test_checkpoint_mutated_slow = fuzz(100, st.data())(check_checkpoint_mutated)


# ------------------------------------------------------------------------------------------ deploy manifests
@pytest.fixture(scope="module")
def deployed(checkpoint: Path, demo_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The checkpoint deployed on the torch backend (the quickest: no export); returns the model folder."""
    from smnas_trt.deploy import DeployOptions, deploy_models, deploy_spec, target_from_checkpoint
    from smnas_trt.profiling.timing import TimingConfig

    out = tmp_path_factory.mktemp("deployed")
    target = target_from_checkpoint(checkpoint, demo_data, ap=0.01, ap50=0.02)
    quick = TimingConfig(warmup_runs=1, warmup_s=0.0, min_runs=3, max_runs=5, budget_s=0.0)
    result = deploy_models([target], DeployOptions(out=out, spec=deploy_spec("torch", threads=1), verify_images=1,
                                                   timing=quick))
    assert not result.failed, result.models[0].error
    return out / target.arch_id


def check_manifest_folder(folder: Path) -> None:
    from smnas_trt.deploy.manifest import check_files, read_manifest, write_index

    try:
        manifest = read_manifest(folder)
        check_files(folder, manifest)
        write_index(folder.parent)
    except SmnasError as e:
        assert_one_line(e)
        return
    loaded()
    assert isinstance(manifest.arch, str) and manifest.files


def check_manifest_mutated(deployed: Path, scratch: Path, data: st.DataObject) -> None:
    folder = scratch / "models" / deployed.name
    shutil.rmtree(folder.parent, ignore_errors=True)
    shutil.copytree(deployed, folder)
    manifest = folder / "manifest.json"
    how = data.draw(st.sampled_from(["fields", "bytes", "file"]))
    if how == "fields":
        manifest.write_text(json.dumps(data.draw(mutated_data(json.loads(manifest.read_text())))))
    elif how == "bytes":
        manifest.write_bytes(data.draw(mutated_bytes(manifest.read_bytes())))
    else:
        victim = folder / data.draw(st.sampled_from(sorted(json.loads(manifest.read_text())["files"])))
        victim.write_bytes(data.draw(mutated_bytes(victim.read_bytes())))
    check_manifest_folder(folder)


test_manifest_mutated, test_manifest_mutated_slow = fuzz(300, st.data())(check_manifest_mutated)


def test_the_base_inputs_are_valid(coco_root: Path, demo_data: Path, lut_file: Path, predictor_dir: Path,
                                   checkpoint: Path, deployed: Path, scratch: Path) -> None:
    """The unmutated inputs load: the properties above test mutations of working files."""
    for text in VALID_ARCHS:
        assert str(parse(text)) == str(parse(str(parse(text))))
    for path in BUILTIN_SPACES.values():
        check_space_file(path)
    check_search_mapping(SEARCH_DATA)
    shutil.copy(demo_data / "instances_val.json", coco_root / "instances_val.json")
    from smnas_trt.data import CocoDetection

    assert len(CocoDetection(coco_root, "val", COCO_SIZE)) == 3
    from smnas_trt.predictors import LatencyPredictor
    from smnas_trt.profiling.lut import LatencyTable
    from smnas_trt.training.arch import load_trained

    with LatencyTable.open(lut_file) as table:
        assert len(table.model_rows()) == len(LUT_ARCHS)
    assert LatencyPredictor.load(predictor_dir).predict(PREDICT_ARCHS)[0].shape == (3,)
    assert load_trained(checkpoint)[1]["arch"] == CKPT_ARCH
    from smnas_trt.deploy.manifest import check_files, read_manifest

    check_files(deployed, read_manifest(deployed))


# ------------------------------------------------------------------------------------------ the CLI's error line
MESSAGE_TEXT = st.text(st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp")), max_size=120)


def check_error_line(message: str) -> None:
    """What `smnas` prints for an SmnasError is `error: ` and the message, verbatim, on one line."""
    import io

    from rich.console import Console

    from smnas_trt.cli import print_error

    buffer = io.StringIO()
    print_error(Console(file=buffer, width=40, color_system=None), message)
    assert buffer.getvalue() == f"error: {message}\n"


test_cli_error_line, test_cli_error_line_slow = fuzz(
    200, st.one_of(MESSAGE_TEXT, st.text("[]/\\:abcx _", max_size=40)))(check_error_line)


def test_cli_error_line_regressions() -> None:
    """`[/x]` raised rich's MarkupError (a traceback); with markup escaping a trailing backslash doubled
    (found by Hypothesis: message '\\\\'); `:smile:` would have become an emoji."""
    for message in ("[/x]", "\\", ":smile:", "[bold]800x600", "size: '[/]' is bad"):
        check_error_line(message)
