import random
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

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


# ---------------------------------------------------------------------------------------------- bounds
PAPER_R50 = "r50_64_111-2111-211111-211"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (f"99999x99999/{PAPER_R50}/fpn:P2-P5:256/rpn/cascade3",
         "size: 99999x99999 is too large (at most 8192 per side)"),
        (f"8193x600/{PAPER_R50}/fpn:P2-P5:256/rpn/2fc", "size: 8193x600 is too large (at most 8192 per side)"),
        (f"800x600/{PAPER_R50}/fpn:P2-P5:4096/rpn/2fc", "neck: FPN channels 4096 is too large (at most 2048)"),
        (f"800x600/{PAPER_R50}/fpn:P2-P5:256/none/retina:17x256", "depth 17 is too large (at most 16)"),
        (f"800x600/{PAPER_R50}/fpn:P2-P5:256/none/fcos:4x4096", "width 4096 is too large (at most 2048)"),
        (f"800x600/{PAPER_R50}/fpn:P2-P5:256/rpn/cascade3:16384", "fc width 16384 is too large (at most 8192)"),
        ("800x600/r50_1024_111-2111-211111-211/fpn:P2-P5:256/rpn/2fc", "base channels 1024 is too large (at most 512)"),
        ("800x600/r50_512_2222-2111-211111-211/fpn:P2-P5:256/rpn/2fc",
         "base 512 doubled 7 times is 65536 channels, too wide (at most 4096 per block)"),
        ("800x600/r50_64_" + "1" * 62 + "-1-1-1/fpn:P2-P5:256/rpn/2fc", "65 blocks, too many (at most 64)"),
        ("800x600/x50(256x4d)_64_111-2111-211111-211/fpn:P2-P5:256/rpn/2fc", "at most 128 groups of width 256"),
        ("800x600/x50(128x256d)_64_111-2111-211111-211/fpn:P2-P5:256/rpn/2fc", "grouped convs, too wide"),
        ("800x600/mbv2_2.5/fpn:P2-P5:256/rpn/2fc", "width multiplier 2.5 is outside 0.1-2.0"),
    ],
)
def test_gene_upper_bounds_name_the_field_and_the_bound(text: str, message: str) -> None:
    with pytest.raises(ArchError, match=re.escape(message)) as info:
        parse(text)
    assert len(str(info.value).splitlines()) == 1


def test_bounds_keep_every_builtin_space_valid() -> None:
    """The largest genes of the paper space (and its standard ResNet-101 code) stay inside the bounds."""
    space = load_space("paper")
    biggest = space.parse("1333x800/x101(32x4d)_72_111-2111-" + "2" + "1" * 22 + "-211/fpn:P2-P5:384/rpn/cascade3:1024")
    assert biggest.size.width == 1333
    assert parse("8192x8192/mbv2_2.0/fpn:P2-P5:2048/none/retina:16x2048").size.height == 8192
    assert parse("800x600/r50_64_" + "1" * 61 + "-1-1-1/fpn:P2-P5:256/rpn/2fc").backbone.num_blocks == 64


# Found by tests/test_fuzz_inputs.py (Hypothesis).
def test_a_number_of_thousands_of_digits_is_an_arch_error() -> None:
    """int() refuses 4300+ digits with a ValueError; the parser now says which field cannot be read."""
    with pytest.raises(ArchError, match=r"^size: cannot parse '1111") as info:
        parse("1" * 5000 + "x600/r50_64_111-2111-211111-211/fpn:P2-P5:256/rpn/cascade3")
    assert len(str(info.value)) < 300


def test_a_width_multiplier_with_three_decimals_is_refused() -> None:
    """mbv2_0.125 printed as mbv2_0.12: its canonical string was another arch (and the builder refused it)."""
    with pytest.raises(ArchError, match="more than two decimals"):
        parse("128x128/mbv2_0.125/none:C4/none/fcos:2x64")
    assert str(parse("128x128/mbv2_0.10/none:C4/none/fcos:2x64")) == "128x128/mbv2_0.1/none:C4/none/fcos:2x64"


def test_non_ascii_digits_are_not_numbers() -> None:
    with pytest.raises(ArchError, match=r"^size"):
        parse("١٢٨x128/mbv2_0.5/none:C4/none/fcos:2x64")


def test_cli_describe_refuses_a_too_large_arch_in_one_line() -> None:
    out = _cli("space", "describe", f"99999x99999/{PAPER_R50}/fpn:P2-P5:256/rpn/cascade3")
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == ["error: size: 99999x99999 is too large (at most 8192 per side)"]


def test_cli_prints_messages_that_look_like_markup_verbatim() -> None:
    """An arch string with `[/x]` in it made rich raise MarkupError (a traceback) instead of the one line."""
    out = _cli("space", "describe", "[/x]")
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "error: arch: '[/x]' has 2 fields; expected 5: size/backbone/neck/rpn/head, e.g. "
        "800x600/r50_64_111-2111-211111-211/fpn:P2-P5:256/rpn/cascade3"]


# ---------------------------------------------------------------------------------------------- space YAML
def _space_yaml(tmp_path: Path, edit: object) -> Path:
    raw = yaml.safe_load(BUILTIN_SPACES["demo"].read_text())
    edit(raw)  # type: ignore[operator]
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_a_misspelt_field_is_named_before_the_field_it_leaves_missing(tmp_path: Path) -> None:
    path = _space_yaml(tmp_path, lambda d: d.update(nmae=d.pop("name")))
    with pytest.raises(ConfigError) as info:
        load_space_config(path)
    assert str(info.value) == f"{path}: nmae: unknown field (did you mean name?)"
    # Nested, several at once, an optional field, and a real error after them.
    path = _space_yaml(tmp_path, lambda d: (d["defaults"].update(bsae=d["defaults"].pop("base")),
                                            d.update(colour="blue", mobilenet_widht=[0.5], fpn_channels=[99999])))
    with pytest.raises(ConfigError) as info:
        load_space_config(path)
    assert str(info.value) == (f"{path}: colour: unknown field; mobilenet_widht: unknown field (did you mean "
                               "mobilenet_widths?); defaults.bsae: unknown field (did you mean base?); "
                               "fpn_channels: 99999 is too large (at most 2048)")


@pytest.mark.parametrize(("edit", "message"), [
    (lambda d: d.update(sizes=["99999x99999"]), "sizes: size 99999x99999 is too large (at most 8192 per side)"),
    (lambda d: d.update(sizes=["0128x128"]), "sizes: size '0128x128' is not WIDTHxHEIGHT"),
    (lambda d: d.update(base_channels=[16, 1024], defaults={**d["defaults"], "base": 16}),
     "base_channels: 1024 is too large (at most 512)"),
    (lambda d: d.update(dense_depths=[1, 2, 40]), "dense_depths: 40 is too large (at most 16)"),
    (lambda d: d.update(mobilenet_widths=[0.25, 0.35, 0.125]), "more than two decimals"),
    # Found by Hypothesis: sampling enumerated every split of the block count (OverflowError, MemoryError).
    (lambda d: d.update(blocks=[5, 10**40]), "blocks: need 4 <= min <= max <= 64"),
    (lambda d: d.update(blocks=[5, 2**63]), "blocks: need 4 <= min <= max <= 64"),
    # Found by Hypothesis: structures use the standard codes (3 doublings), which the space then refused.
    (lambda d: d.update(doublings=0), "doublings: ResNet/ResNeXt structures use the standard codes"),
    (lambda d: d.update(doublings=9), "doublings: need 0 <= doublings <= the minimum block count 5"),
    (lambda d: d["defaults"].update(resnext_groups=0), "defaults.resnext_groups: 0 is too small (at least 1)"),
    (lambda d: d["defaults"].update(resnext_group_width=1), "resnext50: defaults: ResNeXt base 16 x width 1d gives "
     "zero-width groups"),
])
def test_space_options_outside_the_arch_bounds_are_config_errors(tmp_path: Path, edit: object,
                                                                   message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)) as info:
        load_space_config(_space_yaml(tmp_path, edit))
    assert len(str(info.value).splitlines()) == 1


def test_space_yaml_key_with_a_line_break_stays_one_line(tmp_path: Path) -> None:
    """Found by Hypothesis: an unknown key "\\r" was printed raw, splitting the message in two."""
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump({"\r": None}))
    with pytest.raises(ConfigError) as info:
        load_space_config(path)
    assert str(info.value) == f"{path}: '\\r': unknown field; name: Field required"


def test_space_yaml_that_is_not_utf8(tmp_path: Path) -> None:
    """Found by Hypothesis: a flipped first byte raised UnicodeDecodeError."""
    path = tmp_path / "space.yaml"
    path.write_bytes(b"\x80" + BUILTIN_SPACES["demo"].read_bytes()[1:])
    with pytest.raises(ConfigError, match=r"space.yaml: not UTF-8 text \(byte 0\)"):
        load_space_config(path)


def test_large_block_counts_sample_without_enumerating() -> None:
    config = load_space_config("demo").model_copy(update={"blocks": (60, 64)})
    space = SearchSpace(config)
    arch = space.sample_arch(random.Random(0))
    for _ in range(50):
        arch = space.sample_arch(random.Random(_))
        if arch.backbone.kind != "mobilenetv2":
            assert 60 <= arch.backbone.num_blocks <= 64 and arch.backbone.num_doublings == 3
            assert space.check(arch) is arch
