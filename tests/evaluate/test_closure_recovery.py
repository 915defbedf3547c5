"""Acceptance on a small closure (box 32): training orders the particles along the closure and its
flow reaches a stated fraction of the true excursion between the end states; the figures of
``evaluate/closure.py`` score the truth itself perfectly.

The bounds are set from measurement with margin (see ``test_trained_closure_reaches_the_ends``);
the oracle's and the full benchmark's figures are in ``benchmarks/RESULTS.md`` (## closure).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_flex3d.config import TrainConfig
from napari_flex3d.evaluate.closure import closure_figures, run_closure_figures
from napari_flex3d.simulate.dataset import simulate_dataset
from napari_flex3d.simulate.oracle import true_motion_model_and_mesh
from napari_flex3d.training.loop import train_run

BOX, APIX = 32, 6.0
# Measured with the defaults (CPU2, 1 thread, loaded; benchmarks/RESULTS.md, ## closure, cl13): the default minibatch
# (950 training particles: 32, 30 updates an epoch) gave |Spearman| 0.825, excursion 0.89, span 1.07, curvature 0.86,
# moving-domain correlation 0.992 / 0.970 / 0.992. Batches of 100 (10 updates an epoch; ch13, the same at 901f099)
# gave 0.80, 0.34, 1.06, 0.92 (0.962 / 0.950 / 0.963), and a fixed rigidity 2.0 0.79, 0.17, 0.54, 0.33: both fail the
# excursion's and the end states' bounds.
# Bounds with margin for other machines' rounding:
MIN_SPEARMAN = 0.75
MIN_EXCURSION = 0.6
MIN_SPAN = 0.9
MIN_CURVATURE = 0.5
MIN_END_CORR = 0.97  # the moving domain's correlation with the true open and closed maps


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    root = tmp_path_factory.mktemp("closure")
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    simulate_dataset(root / "sim", n_particles=1000, box=BOX, apix=APIX, snr=0.3, motion="closure", seed=0,
                     n_atoms=1500)
    torch.set_num_threads(n)
    return root


def test_the_true_motion_with_true_latents_scores_the_full_excursion(sim):
    """The figures' own check: the true model at the true coordinates gives order 1, the whole
    excursion (up to the mesh's linear interpolation and the MLP fit; measured 0.99), the whole
    span (1.01) and the arc's curvature (0.96)."""
    model, _, latents = true_motion_model_and_mesh(sim / "sim", fit_steps=300)
    f = closure_figures(model, latents.numpy(), sim / "sim", n_path=21, n_modes=500)
    print(f"\ntrue model at the true coordinates: {f}")
    assert f["spearman"] == pytest.approx(1.0)
    assert 0.9 < f["excursion"] < 1.05 and 0.9 < f["excursion_rms"] < 1.05, f
    assert min(f["moving_corr"]) > 0.95, f
    assert f["span"] > 0.9, f
    assert f["curvature"] > 0.8, f  # measured 0.96: the fitted MLP carries the arc's 1 - cos mode


@pytest.mark.slow
def test_trained_closure_reaches_the_ends(sim):
    torch.manual_seed(0)
    config = TrainConfig(
        particles=str(sim / "sim" / "particles.star"), map=str(sim / "sim" / "consensus.mrc"), out=str(sim / "run"),
        latent_dim=1, epochs=4, warmup_epochs=1, kernel="linear", preview_every=0, threads=1,
    )  # the default minibatch: 950 training particles, batches of 32, 30 updates an epoch
    for _ in train_run(config, sim / "run"):
        pass
    f = run_closure_figures(sim / "run", sim / "sim", n_path=9, n_modes=500)
    print(f"\nclosure, 1,000 particles, box 32, SNR 0.3, 4 epochs: |Spearman| {f['spearman']:.3f}, excursion "
          f"{f['excursion']:.2f} (RMS {f['excursion_rms']:.2f}), moving corr {np.round(f['moving_corr'], 3)}, "
          f"span {f['span']:.2f}, curvature {f['curvature']:.2f}")
    assert f["spearman"] > MIN_SPEARMAN
    assert f["excursion"] > MIN_EXCURSION
    assert f["span"] > MIN_SPAN  # the maps at the latent's extremes look like the true ends
    assert f["curvature"] > MIN_CURVATURE  # the arc's 1 - cos term is carried
    assert min(f["moving_corr"][0], f["moving_corr"][2]) > MIN_END_CORR  # the end states, where most particles are
