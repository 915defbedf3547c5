"""The pose-artefact flag on a run that learned the hinge: the learned axis is not flagged.

The recipe of tests/reconstruct/test_trained_hinge.py (2,000 hinge particles at box 48, SNR
0.3, trained at box 24 with K=1 for 4 epochs): the latent follows the true hinge
(|Spearman| >= 0.8), so it is motion, and its largest |Spearman| with defocus or pose stays
under the threshold; an axis made of defocus plus noise on the same particles is flagged.
A barely trained run is another matter: 3 short epochs on 200 particles (the fast tests'
run) left latents at Spearman -0.30 and -0.32 with defocus, and the flag fired there.
"""

from __future__ import annotations

import numpy as np
import pytest

from napari_flex3d.analyze.covariates import ARTEFACT_SPEARMAN, particle_table, pose_artefacts
from napari_flex3d.evaluate.recovery import spearman
from napari_flex3d.io.particles import read_particles

pytestmark = pytest.mark.slow


def test_learned_hinge_is_not_flagged_and_defocus_is(trained_hinge):
    sim = trained_hinge / "sim"  # the recipe above, simulated and trained once per session (tests/conftest.py)
    latent = np.load(trained_hinge / "run" / "latents.npy")[:, 0]
    hinge = np.load(sim / "truth" / "coords.npy")[:, 0]
    assert abs(spearman(latent, hinge)) >= 0.8  # it learned the motion
    ps = read_particles(sim / "particles.star")
    defocus = 0.5 * (ps.defocus_u_a + ps.defocus_v_a)
    fake = (defocus - defocus.mean()) / defocus.std() + 0.5 * np.random.default_rng(1).normal(size=len(ps))
    flags = pose_artefacts(particle_table(np.stack([latent, fake], axis=1), ps))
    assert flags["flagged"].tolist() == [False, True], flags.to_string()
    assert abs(flags.loc[0, "spearman"]) < ARTEFACT_SPEARMAN
