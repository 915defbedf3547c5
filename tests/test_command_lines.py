"""The equivalent ``flex3d`` command of a job: settings -> options -> the same settings.

The real ``flex3d`` parser reads back every command these helpers write: a renamed option,
a lost minus sign or a float printed short would change the job a user re-runs.
"""

from __future__ import annotations

import dataclasses
import shlex

import pytest

from napari_flex3d.cli import build_parser
from napari_flex3d.config import TrainConfig, command_line, from_arguments, to_arguments
from napari_flex3d.io.atomic import write_command


def test_a_training_config_survives_its_command_line():
    base = TrainConfig(particles="/data/p.star", map="/data/map.mrc", out="/runs/r1")
    assert to_arguments(base) == ["--particles=/data/p.star", "--map=/data/map.mrc", "--out=/runs/r1"]
    changed = {}
    for f in dataclasses.fields(TrainConfig):  # every setting off its default, the way its type allows
        v = getattr(base, f.name)
        if isinstance(v, bool):
            changed[f.name] = not v
        elif isinstance(v, int) and f.metadata.get("choices") is None:
            changed[f.name] = v + 1
        elif isinstance(v, float) and f.metadata.get("choices") is None:
            changed[f.name] = v * 0.7 + 1 / 3  # many digits: the text must read back to the same float
    for name, value in changed.items():
        try:
            cfg = dataclasses.replace(base, **{name: value})
        except ValueError:
            continue  # out of this setting's range: not a value a user could have run
        ns = build_parser().parse_args(["train", *to_arguments(cfg)])
        assert from_arguments(TrainConfig, ns) == cfg, name
    assert len(changed) > 20


def test_negative_values_and_optional_settings_read_back():
    cfg = TrainConfig(particles="p.star", map="m.mrc", out="o")
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    optional = [n for n, f in fields.items() if f.default is None]
    assert optional, "TrainConfig has no optional setting to test"
    for name in optional:
        for value in (None,):
            ns = build_parser().parse_args(["train", *to_arguments(dataclasses.replace(cfg, **{name: value}))])
            assert from_arguments(TrainConfig, ns) == cfg
    argv = command_line("generate", run="/r", out="/o.mrc", z="-1.5,0.3")
    assert build_parser().parse_args(argv[1:]).z == "-1.5,0.3"


def test_reconstruct_and_mesh_commands_parse_to_their_values():
    argv = command_line("reconstruct", run="/r", particles="/p.star", out="/o", run_b=None, iterations=7,
                        no_rigid=True, device="cpu", passthrough=None, root="/root dir", mask=["/m1.mrc", "/m2.mrc"])
    ns = build_parser().parse_args(argv[1:])
    assert (ns.run, ns.particles, ns.out, ns.iterations, ns.no_rigid, ns.device) == ("/r", "/p.star", "/o", 7, True, "cpu")
    assert ns.run_b is None and ns.root == "/root dir" and ns.mask == ["/m1.mrc", "/m2.mrc"]
    argv = command_line("mesh", map="/m.mrc", out="/mesh.npz", apix=1.2345678901, threshold=-0.012345678,
                        lowpass_a=0.0, dilate_a=6.0, cell_size_a=16.0, rigidity_floor=0.1)
    ns = build_parser().parse_args(argv[1:])
    assert (ns.apix, ns.threshold, ns.lowpass_a, ns.cell_size_a) == (1.2345678901, -0.012345678, 0.0, 16.0)


def test_a_written_command_is_a_runnable_script_with_the_same_words(tmp_path):
    argv = command_line("reconstruct", run="/a run/with 'quotes'", particles="/p.star", out=str(tmp_path), iterations=3)
    path = write_command(tmp_path / "flex3d_command.sh", argv, "a test job")
    text = path.read_text()
    assert text.startswith("#!/bin/sh\n") and "a test job" in text
    assert path.stat().st_mode & 0o111
    assert shlex.split(text.strip().splitlines()[-1]) == argv


def test_an_unknown_option_name_would_not_parse():
    with pytest.raises(SystemExit):
        build_parser().parse_args(command_line("reconstruct", run="/r", particles="/p", out="/o", itrations=3)[1:])
