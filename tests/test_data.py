"""Demo generator, COCO layout resolution, checked annotation loading, resize/flip transforms."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from pycocotools.coco import COCO

from smnas_trt.data import CocoDetection, build_loader, generate_demo, load_annotations, resolve_split
from smnas_trt.data.coco import to_original_boxes
from smnas_trt.errors import DataError


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_demo(tmp_path_factory.mktemp("d") / "demo", n_train=8, n_val=4, size=128, seed=3)


def _copy(demo: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "copy"
    shutil.copytree(demo, dst)
    return dst


def _edit_json(path: Path, edit) -> None:  # type: ignore[no-untyped-def]
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def test_demo_is_deterministic_and_loads_in_pycocotools(demo: Path, tmp_path: Path) -> None:
    again = generate_demo(tmp_path / "again", n_train=8, n_val=4, size=128, seed=3)
    other = generate_demo(tmp_path / "other", n_train=8, n_val=4, size=128, seed=4)
    for rel in ["instances_train.json", "instances_val.json", "train/000001.png", "val/000004.png"]:
        assert (demo / rel).read_bytes() == (again / rel).read_bytes(), rel
    assert (demo / "train/000001.png").read_bytes() != (other / "train/000001.png").read_bytes()

    coco = COCO(str(demo / "instances_train.json"))
    assert len(coco.getImgIds()) == 8
    assert sorted(c["name"] for c in coco.loadCats(coco.getCatIds())) == [str(d) for d in range(10)]
    anns = coco.loadAnns(coco.getAnnIds())
    assert len(anns) >= 8  # at least one digit per image
    for a in anns:
        x, y, w, h = a["bbox"]
        assert w > 0 and h > 0 and x >= 0 and y >= 0 and x + w <= 128 and y + h <= 128
    assert not list(tmp_path.glob(".*tmp"))  # the temporary folder was renamed away


def test_demo_reuses_same_parameters_and_refuses_other_folders(demo: Path, tmp_path: Path) -> None:
    stamp = (demo / "instances_train.json").stat().st_mtime_ns
    assert generate_demo(demo, n_train=8, n_val=4, size=128, seed=3) == demo
    assert (demo / "instances_train.json").stat().st_mtime_ns == stamp
    with pytest.raises(DataError, match="--overwrite"):
        generate_demo(demo, n_train=9, n_val=4, size=128, seed=3)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(DataError, match="other files"):
        generate_demo(foreign, n_train=2, n_val=1, size=64)
    assert (foreign / "notes.txt").exists()
    with pytest.raises(DataError, match="--size"):
        generate_demo(tmp_path / "tiny", size=16)


def test_resolve_split_layouts(demo: Path, tmp_path: Path) -> None:
    files = resolve_split(demo, "val")
    assert files.images_dir == demo / "val" and files.ann_file == demo / "instances_val.json"
    # COCO 2017 layout
    coco = tmp_path / "coco"
    (coco / "annotations").mkdir(parents=True)
    shutil.copytree(demo / "val", coco / "val2017")
    shutil.copy(demo / "instances_val.json", coco / "annotations" / "instances_val2017.json")
    files = resolve_split(coco, "val")
    assert files.images_dir == coco / "val2017"
    assert len(CocoDetection(coco, "val", (64, 64))) == 4
    with pytest.raises(DataError, match="no annotations for split 'train'"):
        resolve_split(coco, "train")
    shutil.rmtree(coco / "val2017")
    with pytest.raises(DataError, match="images folder missing"):
        resolve_split(coco, "val")
    with pytest.raises(DataError, match="data folder not found"):
        resolve_split(tmp_path / "nowhere", "val")


def test_bad_annotation_files(demo: Path, tmp_path: Path) -> None:
    root = _copy(demo, tmp_path)
    ann = root / "instances_val.json"
    good = ann.read_text()

    ann.write_text(good[: len(good) // 2])
    with pytest.raises(DataError, match="truncated or invalid JSON"):
        CocoDetection(root, "val", (64, 64))

    ann.write_text(good)
    _edit_json(ann, lambda d: d["annotations"][0].update(image_id=999))
    with pytest.raises(DataError, match="points at image id 999"):
        CocoDetection(root, "val", (64, 64))

    ann.write_text(good)
    _edit_json(ann, lambda d: d["annotations"][0].update(category_id=77))
    with pytest.raises(DataError, match="category_id 77"):
        CocoDetection(root, "val", (64, 64))

    ann.write_text(good)
    (root / "val" / "000002.png").unlink()
    with pytest.raises(DataError, match=r"image file missing: .*000002.png"):
        CocoDetection(root, "val", (64, 64))

    ann.unlink()
    with pytest.raises(DataError, match="no annotations for split 'val'"):
        CocoDetection(root, "val", (64, 64))
    with pytest.raises(DataError, match="annotation file missing"):
        load_annotations(ann)


def test_bad_boxes_are_counted_per_kind_and_partly_outside_ones_clipped(demo: Path, tmp_path: Path,
                                                                        caplog: pytest.LogCaptureFixture) -> None:
    root = _copy(demo, tmp_path)
    ann = root / "instances_val.json"
    n_before = len(json.loads(ann.read_text())["annotations"])

    def degrade(d: dict) -> None:  # type: ignore[type-arg]
        a = d["annotations"]
        a[0]["bbox"][2] = 0.0  # zero width
        a[1]["bbox"] = [500.0, 500.0, 10.0, 10.0]  # entirely outside the 128x128 image
        a[2]["bbox"] = [10.0, 10.0, -5.0, 20.0]  # negative width
        a[3]["bbox"] = [10.0, float("nan"), 5.0, 20.0]  # non-finite (Python's JSON writes NaN)
        a[4]["bbox"] = [-8.0, 100.0, 20.0, 50.0]  # partly outside: clipped to [0, 100, 12, 28]
        a[4].pop("area")

    _edit_json(ann, degrade)
    with caplog.at_level("WARNING", logger="smnas_trt.data.coco"):
        ds = CocoDetection(root, "val", (64, 64))
    counts = ds.annotation_counts
    assert (counts["zero_area"], counts["outside_image"], counts["negative_size"], counts["non_finite"],
            counts["clipped"]) == (1, 1, 1, 1, 1)
    assert len(ds.coco.getAnnIds()) == n_before - 4
    clipped = ds.coco.anns[5]
    assert clipped["bbox"] == [0.0, 100.0, 12.0, 28.0] and clipped["area"] == 12.0 * 28.0
    # One log line, from the same counts.
    (line,) = [r.getMessage() for r in caplog.records]
    assert "4 boxes skipped (1 non-finite, 1 with negative width or height, 1 zero-area" in line
    assert "1 clipped" in line
    for i in range(len(ds)):
        boxes = ds[i][1]["boxes"]
        assert bool(((boxes[:, 2] - boxes[:, 0]) > 0).all() and ((boxes[:, 3] - boxes[:, 1]) > 0).all())
        assert bool((boxes >= 0).all() and (boxes <= 64).all())


def test_a_split_without_usable_boxes_or_images_is_refused(demo: Path, tmp_path: Path) -> None:
    root = _copy(demo, tmp_path)
    ann = root / "instances_val.json"
    good = ann.read_text()

    def all_bad(d: dict) -> None:  # type: ignore[type-arg]
        for i, a in enumerate(d["annotations"]):
            a["bbox"] = [10.0, 10.0, -3.0, 5.0] if i % 3 else [10.0, 10.0, float("inf"), 5.0]

    _edit_json(ann, all_bad)
    n = len(json.loads(good)["annotations"])
    n_inf = len(range(0, n, 3))
    with pytest.raises(DataError) as info:
        CocoDetection(root, "val", (64, 64))
    assert str(info.value) == (f"{ann}: no usable box: {n_inf} non-finite, {n - n_inf} with negative width or "
                               "height")
    ann.write_text(good)
    _edit_json(ann, lambda d: d.update(annotations=[]))
    with pytest.raises(DataError, match="no usable box: the file has no annotations"):
        CocoDetection(root, "val", (64, 64))
    ann.write_text(good)
    _edit_json(ann, lambda d: [a.update(iscrowd=1) for a in d["annotations"]])
    with pytest.raises(DataError, match=rf"no usable box: {n} crowd \(not trained on\)"):
        CocoDetection(root, "val", (64, 64))
    ann.write_text(good)
    _edit_json(ann, lambda d: d.update(images=[], annotations=[]))
    with pytest.raises(DataError, match=r"instances_val.json: no images"):
        load_annotations(ann)


# Found by tests/test_fuzz_inputs.py (Hypothesis): each crashed the reader with a TypeError, ValueError,
# KeyError, OverflowError or AttributeError, or let a box through that later broke training or COCOeval.
@pytest.mark.parametrize(("edit", "message"), [
    (lambda d: d["annotations"][1].update(bbox=["", 35.0, 14.0, 23.0]), r"annotation 2 has bbox \[''"),
    (lambda d: d["annotations"][1].update(bbox=["6.0", 20.0, 14.0, 20.0]), r"annotation 2 has bbox \['6.0'"),
    (lambda d: d["annotations"][1].update(bbox=[None, 0.0, 5.0, 8.0]), "annotation 2 has bbox"),
    (lambda d: d["annotations"][1].update(bbox=[False, 20.0, 14.0, 20.0]), "annotation 2 has bbox"),
    (lambda d: d["annotations"][1].update(category_id=[]), r"annotation 2 has category_id \[\]"),
    (lambda d: d["annotations"][1].update(image_id=[]), r"annotation 2 points at image id \[\]"),
    (lambda d: d["annotations"][1].update(id=[]), r"annotation .* needs an integer id"),
    (lambda d: d["annotations"][1].pop("id"), r"annotation .* needs an integer id"),
    (lambda d: d["annotations"][1].update(area="big"), "annotation 2 has area 'big'"),
    (lambda d: d["annotations"][1].update(iscrowd="yes"), "annotation 2 has iscrowd 'yes'"),
    (lambda d: d["categories"][0].update(id=float("inf")), "category entry .* needs an integer id"),
    (lambda d: d["categories"][0].update(id=5.5), "category entry .* needs an integer id"),
    (lambda d: d["categories"].__setitem__(0, 7), "category entry 7 needs an integer id"),
    (lambda d: d["annotations"].__setitem__(0, 7), "annotation entry 7 is not an object"),
    (lambda d: d["images"][0].update(file_name=5), "image entry .* needs an integer id, a file_name"),
    (lambda d: d["images"][0].update(width=float("nan")), "image entry .* integer width and height"),
    (lambda d: d["images"].append(dict(d["images"][0])), "image id 1 appears twice"),
    (lambda d: d["annotations"].append(dict(d["annotations"][0])), "annotation id 1 appears twice"),
])
def test_malformed_entries_are_one_line_errors(demo: Path, tmp_path: Path, edit: Any, message: str) -> None:
    root = _copy(demo, tmp_path)
    _edit_json(root / "instances_val.json", edit)
    with pytest.raises(DataError, match=message) as info:
        CocoDetection(root, "val", (64, 64))
    assert len(str(info.value).splitlines()) == 1


def test_a_null_area_is_recomputed_from_the_box(demo: Path, tmp_path: Path) -> None:
    """Found by Hypothesis: `"area": null` was kept and made COCOeval compare None with numbers."""
    root = _copy(demo, tmp_path)
    _edit_json(root / "instances_val.json", lambda d: d["annotations"][1].update(area=None))
    ann = CocoDetection(root, "val", (64, 64)).coco.anns[2]
    assert ann["area"] == ann["bbox"][2] * ann["bbox"][3]


def test_json_numbers_beyond_python_limits_are_one_line_errors(demo: Path, tmp_path: Path) -> None:
    root = _copy(demo, tmp_path)
    ann = root / "instances_val.json"
    ann.write_text(ann.read_text().replace('"width": 128', '"width": ' + "1" * 5000, 1))
    with pytest.raises(DataError, match="invalid JSON"):
        CocoDetection(root, "val", (64, 64))
    # An integer too large for a float is a non-finite box, not an OverflowError.
    root = _copy(demo, tmp_path / "again")
    _edit_json(root / "instances_val.json", lambda d: d["annotations"][0].update(bbox=[1, 2, 10**400, 5]))
    assert CocoDetection(root, "val", (64, 64)).annotation_counts["non_finite"] == 1


def test_non_contiguous_categories_map_to_contiguous_labels(demo: Path, tmp_path: Path) -> None:
    root = _copy(demo, tmp_path)
    new_ids = {c: 100 + 7 * c for c in range(1, 11)}

    def remap(d: dict) -> None:  # type: ignore[type-arg]
        for c in d["categories"]:
            c["id"] = new_ids[c["id"]]
        for a in d["annotations"]:
            a["category_id"] = new_ids[a["category_id"]]

    _edit_json(root / "instances_val.json", remap)
    ds = CocoDetection(root, "val", (64, 64))
    assert ds.num_categories == 10
    assert ds.label_to_cat == [0, *sorted(new_ids.values())]
    _, target = ds[0]
    image_anns = ds.coco.imgToAnns[target["image_id"]]
    assert sorted(ds.label_to_category(int(lab)) for lab in target["labels"]) == sorted(
        a["category_id"] for a in image_anns)
    assert all(1 <= int(lab) <= 10 for lab in target["labels"])


def test_plain_resize_scales_boxes_and_maps_back(demo: Path) -> None:
    native = CocoDetection(demo, "val", (128, 128))
    resized = CocoDetection(demo, "val", (160, 64))  # non-square: x and y scale differently
    img, t_native = native[1]
    img2, t_resized = resized[1]
    assert img.shape == (3, 128, 128) and img2.shape == (3, 64, 160)
    assert float(img2.min()) >= 0.0 and float(img2.max()) <= 1.0
    expected = t_native["boxes"] * torch.tensor([160 / 128, 64 / 128, 160 / 128, 64 / 128])
    torch.testing.assert_close(t_resized["boxes"], expected)
    back = to_original_boxes(t_resized["boxes"], (160, 64), t_resized["orig_size"])
    torch.testing.assert_close(back, t_native["boxes"])


def test_horizontal_flip_mirrors_image_and_boxes(demo: Path) -> None:
    plain = CocoDetection(demo, "train", (96, 96), train=False)
    flipping = CocoDetection(demo, "train", (96, 96), train=True, hflip=True)
    torch.manual_seed(0)
    seen = set()
    for i in range(len(plain)):
        img, t = plain[i]
        img_f, t_f = flipping[i]
        if torch.equal(img, img_f):
            torch.testing.assert_close(t["boxes"], t_f["boxes"])
            seen.add("same")
        else:
            torch.testing.assert_close(img.flip(-1), img_f)
            b = t["boxes"]
            mirrored = torch.stack([96 - b[:, 2], b[:, 1], 96 - b[:, 0], b[:, 3]], 1)
            torch.testing.assert_close(t_f["boxes"], mirrored)
            seen.add("flipped")
        assert torch.equal(t["labels"], t_f["labels"])
    assert seen == {"same", "flipped"}


def test_training_flips_by_default_except_the_mirror_asymmetric_demo_digits(demo: Path, tmp_path: Path) -> None:
    assert not CocoDetection(demo, "train", (96, 96), train=True).hflip
    plain_coco = _copy(demo, tmp_path)
    (plain_coco / "demo.json").unlink()  # any other COCO-format folder
    assert CocoDetection(plain_coco, "train", (96, 96), train=True).hflip
    assert not CocoDetection(plain_coco, "val", (96, 96), train=False).hflip


def test_loader_batches_lists_and_is_seeded(demo: Path) -> None:
    loader = build_loader(demo, "train", (64, 64), batch_size=3, train=True, seed=5)
    batches = list(loader)
    assert [len(b[0]) for b in batches] == [3, 3, 2]
    assert all(im.shape == (3, 64, 64) for im in batches[0][0])
    again = [t["image_id"] for _, ts in build_loader(demo, "train", (64, 64), batch_size=3, train=True, seed=5)
             for t in ts]
    assert [t["image_id"] for _, ts in batches for t in ts] == again
    assert sorted(again) == list(range(1, 9))
    ordered = [t["image_id"] for _, ts in build_loader(demo, "val", (64, 64), batch_size=2) for t in ts]
    assert ordered == [1, 2, 3, 4]
