import random
import subprocess
import sys
from pathlib import Path

import pytest

from smnas_trt.errors import ArchError, ConfigError
from smnas_trt.space import STANDARD_STAGES, SearchSpace, load_space, load_space_config, parse
from smnas_trt.space.config import BUILTIN_SPACES
from smnas_trt.space.space import _mutate_code

SPACES = ["demo", "paper"]


@pytest.mark.parametrize("name", SPACES)
def test_round_trip_10000_sampled(name: str) -> None:
    space = load_space(name)
    rng = random.Random(1)
    ids = set()
    for i in range(10_000):
        arch = space.sample_arch(rng) if i % 2 else space.sample_structure(rng)
        text = str(arch)
        again = parse(text)
        assert again == arch
        assert str(again) == text
        assert space.check(again) is again
        ids.add(arch.id)
    assert len(ids) > 1000  # sampling actually explores


@pytest.mark.parametrize("name", SPACES)
def test_every_mutation_stays_valid(name: str) -> None:
    space = load_space(name)
    rng = random.Random(2)
    for _ in range(300):
        arch = space.sample_arch(rng)
        for _ in range(10):
            child = space.mutate(arch, rng)
            assert child != arch
            space.check(child)
            # mutations are modular: the structure never changes
            assert (child.size, child.backbone.kind, child.backbone.depth, child.neck.kind, child.neck.levels,
                    child.rpn, child.head.kind, child.head.stages) == (
                    arch.size, arch.backbone.kind, arch.backbone.depth, arch.neck.kind, arch.neck.levels,
                    arch.rpn, arch.head.kind, arch.head.stages)
            arch = child


def test_same_seed_same_samples() -> None:
    space = load_space("demo")
    a = [str(space.sample_arch(random.Random(7))) for _ in range(3)]
    b = [str(space.sample_arch(random.Random(7))) for _ in range(3)]
    assert a == b


def test_structures_cover_every_combination() -> None:
    space = load_space("demo")
    c = space.config
    assert len(space.structures) == len(c.sizes) * len(c.backbones) * len(c.necks) * len(c.heads)
    assert len({str(a) for a in space.iter_structures()}) == len(space.structures)


@pytest.mark.parametrize(
    ("depth", "code", "channels"),
    [
        (18, "11-21-21-21", [64, 128, 256, 512]),
        (34, "111-2111-211111-211", [64, 128, 256, 512]),
        (50, "111-2111-211111-211", [256, 512, 1024, 2048]),
        (101, "111-2111-2" + "1" * 22 + "-211", [256, 512, 1024, 2048]),
    ],
)
def test_standard_resnet_codes(depth: int, code: str, channels: list[int]) -> None:
    assert "-".join(STANDARD_STAGES[depth]) == code
    arch = parse(f"800x600/r{depth}_64_{code}/fpn:P2-P5:256/rpn/2fc")
    assert arch.backbone.stage_channels() == channels
    torchvision_blocks = {18: [2, 2, 2, 2], 34: [3, 4, 6, 3], 50: [3, 4, 6, 3], 101: [3, 4, 23, 3]}[depth]
    assert [len(s) for s in arch.backbone.stages] == torchvision_blocks


def test_non_standard_code_follows_sm_nas_semantics() -> None:
    # Doubling early: the second block of stage 1 doubles 64 -> 128 planes; stage 2 has no `2`.
    b = parse("512x512/r50_64_1211-111-2111-21/none:C5/none/retina").backbone
    assert b.stage_planes() == [[64, 128, 128, 128], [128, 128, 128], [256, 256, 256, 256], [512, 512]]
    assert b.stage_channels() == [512, 512, 1024, 2048]
    b18 = parse("512x512/r18_48_21-1-12-211/none:C5/none/retina").backbone
    assert b18.stage_channels() == [96, 96, 192, 384]


def test_short_head_forms_parse_to_full_form() -> None:
    arch = parse("800x600/r50_64_111-2111-211111-211/fpn:P2-P5:256/rpn/cascade3")
    assert str(arch) == "800x600/r50_64_111-2111-211111-211/fpn:P2-P5:256/rpn/cascade3:1024"
    assert arch.id == parse(str(arch)).id and len(arch.id) == 10
    assert str(parse("128x128/mbv2_0.5/none:C4/none/fcos:2x64")) == "128x128/mbv2_0.5/none:C4/none/fcos:2x64"
    assert str(parse("128x128/x50(32x4d)_16_11-21-21-21/none:C5/none/retina:1x32")).startswith("128x128/x50(32x4d)_16")


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("800x600/r50_64_111-2111-211111-211/fpn:P2-P5:256/rpn", "arch"),
        ("800by600/r50_64_111-2111-211111-211/fpn:P2-P5:256/rpn/2fc", "size"),
        ("800x600/r51_64_111-2111-211111-211/fpn:P2-P5:256/rpn/2fc", "backbone"),
        ("800x600/r50_64_111-2111-211113-211/fpn:P2-P5:256/rpn/2fc", "backbone"),
        ("800x600/r50_64_111-2111-211111/fpn:P2-P5:256/rpn/2fc", "backbone"),
        ("800x600/r50_64_111-2111-211111-211/fpn:P1-P5:256/rpn/2fc", "neck"),
        ("800x600/r50_64_111-2111-211111-211/none:C3/rpn/2fc", "neck"),
        ("800x600/r50_64_111-2111-211111-211/fpn:P2-P5:256/rpn/retina", "head"),
        ("800x600/r50_64_111-2111-211111-211/fpn:P2-P5:256/none/cascade3", "rpn"),
        ("800x600/r50_64_111-2111-211111-211/fpn:P2-P5:256/rpn/cascade4", "head"),
        ("800x600/r50_64_111-2111-211111-211/fpn:P2-P5:256/maybe/2fc", "rpn"),
    ],
)
def test_bad_strings_name_the_field(text: str, field: str) -> None:
    with pytest.raises(ArchError, match=rf"^{field}") as info:
        parse(text)
    assert "\n" not in str(info.value)


def test_invalid_pairing_lists_allowed_values() -> None:
    with pytest.raises(ArchError, match="2fc or cascade2/cascade3"):
        parse("800x600/r50_64_111-2111-211111-211/fpn:P2-P5:256/rpn/retina")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("640x640/r50_64_111-2111-211111-211/fpn:P2-P5:256/rpn/2fc", "size: 640x640 is not in space 'paper'; allowed"),
        ("800x600/r50_40_111-2111-211111-211/fpn:P2-P5:256/rpn/2fc", "base channels 40"),
        ("800x600/r18_64_1-1-1-2/fpn:P2-P5:256/rpn/2fc", "has 1 '2' blocks"),
        ("800x600/r18_64_1-2-2-2/fpn:P2-P5:256/rpn/2fc", "allowed: 5-15"),
        ("800x600/r50_64_111-2111-211111-211/fpn:P2-P5:100/rpn/2fc", "FPN channels 100"),
        ("800x600/r50_64_111-2111-211111-211/fpn:P3-P6:256/rpn/2fc", "neck fpn:P3-P6"),
        ("800x600/r50_64_111-2111-211111-211/fpn:P2-P5:256/none/fcos", "head fcos"),
    ],
)
def test_out_of_space(text: str, message: str) -> None:
    space = load_space("paper")
    with pytest.raises(ArchError, match=message.replace("(", r"\(")):
        space.parse(text)


def test_block_bound_widens_to_standard_family_count() -> None:
    space = load_space("paper")
    r101 = space.parse("800x600/r101_64_" + "-".join(STANDARD_STAGES[101]) + "/fpn:P2-P5:256/rpn/2fc")
    assert r101.backbone.num_blocks == 33
    assert space.max_blocks(18) == 15 and space.max_blocks(101) == 33


def test_code_mutations_do_what_they_say() -> None:
    rng = random.Random(0)
    stages = ("111", "2111", "211111", "211")
    for _ in range(200):
        ins = _mutate_code("insert_block", stages, rng)
        assert ins is not None and sum(map(len, ins)) == 16 + 1 and "".join(ins).count("2") == 3
        rem = _mutate_code("remove_block", stages, rng)
        assert rem is not None and sum(map(len, rem)) == 16 - 1 and "".join(rem).count("2") == 3
        mov = _mutate_code("move_doubling", stages, rng)
        assert mov is not None and [len(s) for s in mov] == [3, 4, 6, 3] and "".join(mov).count("2") == 3
        assert mov != stages


def test_base_channel_mutation_steps_to_neighbour() -> None:
    space = load_space("paper")
    arch = space.parse("800x600/r50_56_111-2111-211111-211/fpn:P2-P5:256/rpn/2fc")
    seen = {space.mutate(arch, random.Random(s), weights={"base_channels": 1.0, **{
        k: 0.0 for k in ("insert_block", "remove_block", "move_doubling", "neck_channels", "head_width",
                         "head_depth", "mobilenet_width")}}).backbone.base for s in range(40)}
    assert seen == {48, 64}


def test_bad_yaml_field(tmp_path: Path) -> None:
    text = BUILTIN_SPACES["demo"].read_text()
    bad = tmp_path / "space.yaml"
    bad.write_text(text + "colour: blue\n")
    with pytest.raises(ConfigError, match="colour: unknown field"):
        load_space_config(bad)
    bad.write_text(text.replace("heads: [retina", "heads: [yolo"))
    with pytest.raises(ConfigError, match=r"heads\.0: .*'retina'.*got 'yolo'"):
        load_space_config(bad)
    bad.write_text(text.replace("base: 16", "base: 20"))
    with pytest.raises(ConfigError, match=r"defaults\.base: 20 is not one of the listed options"):
        load_space_config(bad)
    bad.write_text("sizes: [128x128\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_space_config(bad)


def test_space_from_config_object() -> None:
    config = load_space_config("demo")
    assert SearchSpace(config).name == "demo"


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", "from smnas_trt.cli import main; main()", *args],
                          capture_output=True, text=True, timeout=120)


def test_cli_sample_and_one_line_errors() -> None:
    out = _cli("space", "sample", "--space", "smnas_trt/configs/space_demo.yaml", "-n", "5", "--seed", "0")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 5
    assert lines == [str(parse(line)) for line in lines]
    bad = _cli("space", "sample", "--space", "no/such.yaml")
    assert bad.returncode == 2
    assert "Traceback" not in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1 and "no/such.yaml" in bad.stderr
