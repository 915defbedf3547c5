"""``solve_half_maps`` takes a :class:`HalfMapSettings`; single fields may be given as keywords,
and a misspelt one fails before any work is done (it is not silently ignored)."""

from __future__ import annotations

import dataclasses

import pytest

from napari_flex3d.reconstruct.halfmaps import HalfMapSettings, solve_half_maps


def test_settings_are_frozen_and_keep_the_cli_defaults():
    s = HalfMapSettings()
    assert (s.iterations, s.rigid, s.box, s.chunk, s.randomise_from_a, s.mask_edge_a) == (20, True, None, 256, "auto", 10.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.iterations = 3


def test_a_misspelt_option_fails_before_any_work(tmp_path):
    run = solve_half_maps(None, None, None, tmp_path / "rec", iteratoins=3)
    with pytest.raises(TypeError, match="iteratoins"):
        next(run)
    assert not (tmp_path / "rec").exists()
