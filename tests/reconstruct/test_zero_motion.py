"""No invented resolution: with zero motion in the data, flex and rigid agree.

A simulated molecule with ``motion="none"`` (every particle at the rest state; 1,500
particles, box 32, SNR 0.3) is trained by the real :func:`train_run` (K=1, 2 epochs, one
of them warm-up), then the flex and the rigid
half maps are solved by the same L-BFGS solver (:func:`solve_half_maps`).

The bound on the FSC difference: for a shell with ``n`` Fourier coefficients the FSC's
standard error is about ``(1 - FSC^2) / sqrt(n)`` (Fisher's z). Two *independent*
reconstructions would differ by ``sqrt(2)`` of that; flex and rigid see the same particles
with the same noise, so any difference is the flow's doing, and we allow two standard
errors per shell (plus 0.005 for the solver's rounding where the FSC is ~1). The
negative control gives the same trained run a flow that invents a coherent motion
(a fixed smooth random field times a random per-particle latent, 6 Å RMS): the same check
must then fail. It also shows why the check matters: that wrong flow makes the half maps
correlate *better* (a deterministic pattern shared by both halves), which only the
objective and the comparison with the truth expose.

About 45 s on 2 lightly loaded cores (2.5 min when heavily shared), most of it training.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from napari_flex3d.config import TrainConfig
from napari_flex3d.io.particles import read_particles
from napari_flex3d.ops.fsc import fsc
from napari_flex3d.reconstruct.halfmaps import solve_half_maps
from napari_flex3d.reconstruct.validation import radial_shells_3d
from napari_flex3d.simulate.dataset import simulate_dataset
from napari_flex3d.model.run import load_run
from napari_flex3d.training.loop import train_run

pytestmark = pytest.mark.slow

BOX, APIX, N = 32, 3.0, 1500


def _shell_counts(box: int) -> np.ndarray:
    """Fourier coefficients per shell of an ``rfftn`` (the independent ones, up to Friedel pairs)."""
    shells = radial_shells_3d(box).reshape(-1).numpy()
    return np.bincount(shells, minlength=box // 2 + 1)[: box // 2 + 1]


def _agreement(flex: np.ndarray, rigid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(|FSC_flex - FSC_rigid|, allowed)`` per shell: two standard errors + 0.005."""
    n = _shell_counts(BOX)
    se = (1.0 - np.clip(rigid, -1, 1) ** 2) / np.sqrt(np.maximum(n, 1))
    return np.abs(flex - rigid), 2.0 * se + 0.005


def _curves(out_dir):
    import csv

    rows = list(csv.DictReader(open(out_dir / "fsc.csv")))
    return (np.array([float(r["fsc_flex"]) for r in rows]), np.array([float(r["fsc_rigid"]) for r in rows]))


class _InventedMotion(torch.nn.Module):
    """A wrong flow generator: ``z (b, 1) -> z * field (b, v, 3)``, with a fixed smooth
    random field of ``rms_a`` Å RMS (a sum of six random plane waves), so every particle
    is moved although none moved in the data."""

    def __init__(self, vertices_a: torch.Tensor, rms_a: float, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        k = torch.randn(6, 3, generator=g) / 30.0  # wave vectors, 1/Å (wavelengths ~ 15-30 Å)
        amp = torch.randn(6, 3, generator=g)
        phase = (vertices_a.float() @ k.T) * 2 * np.pi  # (v, 6)
        field = torch.sin(phase) @ amp  # (v, 3)
        self.register_buffer("field", field * rms_a / field.pow(2).sum(-1).mean().sqrt())

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return z[:, :1, None] * self.field[None]


@pytest.fixture(scope="module")
def zero_motion(tmp_path_factory):
    root = tmp_path_factory.mktemp("zero_motion")
    sim = simulate_dataset(root / "sim", n_particles=N, box=BOX, apix=APIX, snr=0.3, motion="none", seed=0)
    config = TrainConfig(
        particles=str(sim.particles_star), map=str(sim.consensus), out=str(root / "run"),
        latent_dim=1, epochs=2, warmup_epochs=1, batch=100, kernel="linear", preview_every=0,
    )
    for _ in train_run(config, root / "run"):
        pass
    _, _, model = load_run(root / "run", device="cpu")
    latents = torch.as_tensor(np.load(root / "run" / "latents.npy"), dtype=torch.float32)
    ps = read_particles(sim.particles_star)
    events = list(solve_half_maps(model, latents, ps, root / "rec", iterations=6))
    return root, model, latents, ps, events[-1].report


def test_simulated_data_has_no_motion(zero_motion):
    root = zero_motion[0]
    coords = np.load(root / "sim" / "truth" / "coords.npy")
    assert coords.shape == (N, 1) and not coords.any()
    import json

    truth = json.loads((root / "sim" / "truth" / "truth.json").read_text())
    assert truth["motion"] == "none" and [s["coords"] for s in truth["states"]] == [[0.0]]
    rest = _read(root / "sim" / "truth" / truth["states"][0]["file"])
    torch.testing.assert_close(_read(root / "sim" / "truth" / "average.mrc"), rest)


def test_learned_flow_is_small(zero_motion):
    _, model, latents, _, _ = zero_motion
    with torch.no_grad():
        flow = model.flow(latents)  # (n, v, 3) Å
    rms = float(flow.pow(2).sum(-1).mean().sqrt())
    # a tenth of a voxel; the hinge moves the arm by several Å (tens of voxels' worth of phase)
    assert rms < 0.1 * model.apix, f"flow RMS {rms:.3f} Å on data without motion"


def test_flex_and_rigid_agree_within_noise(zero_motion):
    root, _, _, _, report = zero_motion
    flex, rigid = _curves(root / "rec")
    diff, allowed = _agreement(flex, rigid)
    print("|FSC flex - rigid| per shell:", np.round(diff, 4).tolist())
    assert np.all(diff <= allowed), (diff, allowed)
    r_flex, r_rigid = (report["maps"][m]["global"]["fsc_0143_a"] for m in ("flex", "rigid"))
    assert abs(r_flex - r_rigid) < 0.02 * r_rigid, report["maps"]
    # the same particles explained equally well (the objective is not lowered by invented motion)
    for h in ("A", "B"):
        f, r = report["maps"]["flex"]["objective"][h], report["maps"]["rigid"]["objective"][h]
        assert abs(f - r) < 1e-3 * r


def test_the_check_fails_for_a_flow_that_invents_motion(zero_motion, tmp_path):
    _, model, latents, ps, report = zero_motion
    wrong = copy.deepcopy(model)
    wrong.flow = _InventedMotion(model.vertices_a.detach(), rms_a=2.0 * model.apix)
    z = torch.randn(latents.shape, generator=torch.Generator().manual_seed(1))
    events = list(solve_half_maps(wrong, z, ps, tmp_path / "rec", iterations=6, rigid=False))
    flex_wrong = _curves_flex_only(tmp_path / "rec")
    _, rigid = _curves(zero_motion[0] / "rec")
    diff, allowed = _agreement(flex_wrong, rigid)
    print("wrong flow: |FSC flex - rigid| per shell:", np.round(diff, 4).tolist())
    assert np.any(diff > allowed), "a flow that moves particles which never moved went unnoticed"
    # Its half maps correlate *better* than the rigid ones at high frequency (measured: FSC 0.143 at
    # Nyquist against 10.8 Å): the wrong flow is shared by both halves, so the deblurring it implies is a
    # common, deterministic pattern that the gold-standard FSC cannot tell from signal. Two things do:
    wrong_report = events[-1].report
    for h in ("A", "B"):  # 1. the objective: the wrong model explains the same particles worse
        assert wrong_report["maps"]["flex"]["objective"][h] > 1.005 * report["maps"]["rigid"]["objective"][h]
    # 2. the truth: the map drifts away from the true (rest) density in the shells with signal
    root = zero_motion[0]
    truth = _read(root / "sim" / "truth" / "average.mrc")
    rigid_map = 0.5 * (_read(root / "rec" / "rigid_half_A.mrc") + _read(root / "rec" / "rigid_half_B.mrc"))
    wrong_map = 0.5 * (_read(tmp_path / "rec" / "flex_half_A.mrc") + _read(tmp_path / "rec" / "flex_half_B.mrc"))
    shells = slice(3, 10)
    assert fsc(wrong_map, truth)[shells].mean() < fsc(rigid_map, truth)[shells].mean() - 0.02


def _read(path) -> torch.Tensor:
    from napari_flex3d.io.mrc import read_map

    return torch.as_tensor(np.array(read_map(path).data, dtype=np.float32))


def _curves_flex_only(out_dir):
    import csv

    rows = list(csv.DictReader(open(out_dir / "fsc.csv")))
    return np.array([float(r["fsc_flex"]) for r in rows])
