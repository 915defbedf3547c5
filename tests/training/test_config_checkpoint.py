"""Settings round trip, atomic checkpoints that load without unpickling, clear errors."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os

import numpy as np
import pytest
import torch

from napari_flex3d.config import (
    GenerateConfig,
    TrainConfig,
    add_arguments,
    from_arguments,
    from_dict,
    read_config_json,
    to_dict,
)
from napari_flex3d.io.atomic import write_config_json
from napari_flex3d.io.checkpoint import load_checkpoint, save_checkpoint


def test_train_config_defaults_are_cryosparcs():
    c = TrainConfig()
    assert (c.latent_dim, c.layers, c.hidden, c.rigidity_lambda, c.latent_noise) == (2, 6, 64, 2.0, 0.15)
    assert c.epochs == 16
    for f in dataclasses.fields(TrainConfig):
        assert f.metadata.get("help"), f"{f.name} has no help string"


def test_config_json_round_trip(tmp_path):
    c = TrainConfig(particles="p.star", map="m.mrc", box=48, latent_dim=1, mesh_cell_size_a=None, band_ramp_epochs=3.0)
    assert from_dict(TrainConfig, json.loads(json.dumps(to_dict(c)))) == c
    assert TrainConfig.from_dict(json.loads(json.dumps(c.to_dict()))) == c
    g = GenerateConfig(run="r", z=(0.5, -1.0))
    assert from_dict(GenerateConfig, json.loads(json.dumps(to_dict(g)))) == g
    write_config_json(tmp_path / "config.json", c, cli_argv=["flex3d", "train"])
    doc = json.loads((tmp_path / "config.json").read_text())
    assert doc["provenance"]["command_line"] == ["flex3d", "train"] and doc["provenance"]["version"]
    assert read_config_json(tmp_path / "config.json") == c


def test_config_rejects_unknown_and_wrong_types():
    with pytest.raises(ValueError, match="unknown TrainConfig setting"):
        from_dict(TrainConfig, {"latent_dims": 2})
    with pytest.raises(ValueError, match="latent_dim"):
        from_dict(TrainConfig, {"latent_dim": "two"})
    with pytest.raises(ValueError, match="latent_inference"):
        from_dict(TrainConfig, {"latent_inference": "encoder"})


def test_cli_arguments_built_from_the_dataclass():
    parser = add_arguments(argparse.ArgumentParser(), TrainConfig)
    args = parser.parse_args(["--particles", "p.star", "--latent-dim", "1", "--box", "none", "--mesh-cell-size-a", "12"])
    c = from_arguments(TrainConfig, args)
    assert c.particles == "p.star" and c.latent_dim == 1 and c.box is None and c.mesh_cell_size_a == 12.0
    assert c.rigidity_lambda == 2.0


def test_checkpoint_round_trip_is_atomic(tmp_path):
    path = tmp_path / "ck" / "last.pt"
    gen = torch.Generator().manual_seed(3)
    state = {"w": torch.arange(5.0), "rng": gen.get_state(), "config_json": "{}", "epoch": 2, "nested": {"a": [1, 2]}}
    save_checkpoint(path, state)
    got = load_checkpoint(path)
    assert torch.equal(got["w"], state["w"]) and got["epoch"] == 2 and got["nested"] == {"a": [1, 2]}
    assert torch.equal(got["rng"], gen.get_state())
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]  # no temporary left behind


def test_corrupt_truncated_and_foreign_checkpoints_raise_clearly(tmp_path):
    good = tmp_path / "good.pt"
    save_checkpoint(good, {"x": torch.ones(100)})
    truncated = tmp_path / "trunc.pt"
    truncated.write_bytes(good.read_bytes()[:200])
    with pytest.raises(ValueError, match="trunc.pt"):
        load_checkpoint(truncated)
    garbage = tmp_path / "garbage.pt"
    rng = np.random.default_rng(0)
    for _ in range(300):  # random bytes fail in many ways inside torch.load (IndexError, KeyError, ...)
        garbage.write_bytes(rng.bytes(1000))
        with pytest.raises(ValueError, match="garbage.pt"):
            load_checkpoint(garbage)
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {"x": torch.ones(2)}}, foreign)
    with pytest.raises(ValueError, match="not a napari-flex3d checkpoint"):
        load_checkpoint(foreign)


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_checkpoint_with_code_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"format": "napari-flex3d-checkpoint", "format_version": 1, "x": _Evil()}, path)
    with pytest.raises(ValueError, match="evil.pt"):
        load_checkpoint(path)


def test_device_names():
    from napari_flex3d.training.setup import resolve_device

    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="tpu"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda:0")
    else:
        with pytest.raises(ValueError, match="CUDA device"):
            resolve_device(f"cuda:{torch.cuda.device_count()}")
