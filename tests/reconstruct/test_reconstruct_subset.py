"""``flex3d reconstruct --subset FILE``: the particles a STAR or ``.cs`` file lists, matched to the
full set by image name, whatever their order; a particle the set does not hold is refused.

The end-to-end check (the subset job of the Motion analysis widget and its written command
give the same half maps) is in ``tests/_napari/test_motion_widget.py``.
"""

from __future__ import annotations

import numpy as np
import pytest
import starfile
import torch

from napari_flex3d.explore.subsets import write_subset
from napari_flex3d.io.particle_names import particle_names
from napari_flex3d.io.particles import read_particles
from napari_flex3d.reconstruct.halfsets import HalfFlows, select_subset


@pytest.fixture
def particles(formats_dir):
    return read_particles(formats_dir / "cryodrgn" / "relion31.star")  # 5 images of one stack


def _flows(n: int) -> HalfFlows:
    rows = torch.arange(n, dtype=torch.float32)[:, None]  # (n, 1): each latent is its row
    return HalfFlows(None, rows, None, 10 * rows, {"run": "r"})


def test_a_shuffled_subset_selects_its_particles_in_the_sets_order(particles, tmp_path):
    ps = particles
    write_subset(ps, np.array([3, 0, 4]), tmp_path / "sub.star")  # another order than the set's
    flows, sub = select_subset(_flows(len(ps)), ps, tmp_path / "sub.star")
    assert flows.latents.ravel().tolist() == [0.0, 3.0, 4.0]
    assert flows.latents_b.ravel().tolist() == [0.0, 30.0, 40.0]
    assert particle_names(sub).tolist() == particle_names(ps)[[0, 3, 4]].tolist()
    assert flows.sources == {"run": "r", "subset": str(tmp_path / "sub.star"), "subset_particles": 3}
    write_subset(ps, np.array([1]), tmp_path / "sub.cs")  # a cryoSPARC subset of a RELION set
    flows, sub = select_subset(_flows(len(ps)), ps, tmp_path / "sub.cs")
    assert flows.latents.ravel().tolist() == [1.0] and len(sub) == 1


def test_a_subset_with_a_foreign_particle_is_refused(particles, tmp_path):
    write_subset(particles, np.array([1, 2]), tmp_path / "sub.star")
    doc = starfile.read(tmp_path / "sub.star", always_dict=True)
    block = next(b for b in doc.values() if "rlnImageName" in getattr(b, "columns", ()))
    block.loc[1, "rlnImageName"] = "000009@relion31.mrcs"  # the stack holds 5 images
    starfile.write(doc, tmp_path / "foreign.star", overwrite=True)
    with pytest.raises(ValueError, match=r"1 of its 2 particles are not among.*8@relion31.mrcs"):
        select_subset(_flows(len(particles)), particles, tmp_path / "foreign.star")
    block["rlnImageName"] = ["000001@other.mrcs", "000002@other.mrcs"]
    starfile.write(doc, tmp_path / "none.star", overwrite=True)
    with pytest.raises(ValueError, match="none of its 2 particles"):
        select_subset(_flows(len(particles)), particles, tmp_path / "none.star")
    block["rlnImageName"] = "000001@other.mrcs"  # listed twice: ambiguous
    starfile.write(doc, tmp_path / "twice.star", overwrite=True)
    with pytest.raises(ValueError, match="appears more than once"):
        select_subset(_flows(len(particles)), particles, tmp_path / "twice.star")
