"""The ordering on a tiny *trained* case: a hinge learned by the real :func:`train_run`,
then flex and rigid half maps at twice the training box.

2,000 particles at box 48 (2 Å/px, SNR 0.3), trained at box 24 (training Nyquist 8 Å)
with K=1, 4 epochs (1 warm-up), batches of 100 and the linear kernel (the demo's schedule);
then 6 L-BFGS iterations per half map at box 48. This is also the slow test that training
learns: the latent must follow the true hinge coordinate (|Spearman| >= 0.8), and not a
shuffled one.

The rigidity floor is pinned at cryoSPARC's 0.5 here, not the default 0.1. On this small,
short run the held-out validation loss prefers 0.5 (143.96 against 144.69 for simulation seed
0, 141.06 against 141.55 for seed 1), and at 0.1 the flow learns less of the hinge (the arm
moves 2.0-2.7 Å at the coordinate -1 against 3.8-4.5 Å at 0.5), so the flexible maps only
tie the rigid ones (best-state FSC in the arm 0.9643 / 0.9619 against 0.9641 / 0.9624). On
the 20,000-particle benchmarks the validation loss prefers 0.1 (docs/training.md).

The rigidity weight is the default's choice after the warm-up (trials of 2.0, 0.5, 0.125 and
0.03125, guarded at the final band): here it keeps 2.0, the fixed weight the figures below were
measured at (with the choice: |Spearman| 0.939, arm FSC flex 0.9716 against rigid 0.9641;
benchmarks/RESULTS.md, rigidity choice, ch12c).

The flex and rigid maps are compared with the true single states along the hinge (25 of them,
-0.96 to +0.96), in the arm mask (mean FSC, shells 4-11), each at the state it matches best:
the canonical frame is the state at the latents' centre, which on this two-well hinge is
near -0.2, not the rest state. Measured 2026-11-27 (simulation seed 0; seed 1 in brackets):
flex 0.9703 (0.9678) at -0.16, rigid 0.9641 (0.9624) at -0.16 (-0.24); against the true
average flex 0.9641 (0.9592), rigid 0.9776 (0.9798). Against the rest state alone the seed-0
figures are 0.9649 against 0.9578, but seed 1 gives 0.9549 against 0.9556: that measure
depends on where the frame sits. Latent vs true hinge |Spearman| 0.93; objective flex/rigid
0.992 for both halves; global FSC 0.143 at 7.78 Å (flex) and 7.76 Å (rigid), finer than the
training Nyquist. The margins are small: this molecule's arm is a smooth blob of 3 Å-wide
Gaussian atoms, so most of what motion blurs is beyond the signal. The oracle-flow version
(tests/reconstruct/test_halfmaps.py) shows the same ordering with the true motion.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_flex3d.io.mrc import read_map
from napari_flex3d.io.particles import read_particles
from napari_flex3d.reconstruct.halfmaps import solve_half_maps
from napari_flex3d.reconstruct.validation import masked_fsc
from napari_flex3d.simulate.molecule import deform
from napari_flex3d.simulate.oracle import domain_mask, simulated_molecule
from napari_flex3d.simulate.render import render_volume
from napari_flex3d.model.run import load_run
from napari_flex3d.evaluate.recovery import spearman

pytestmark = pytest.mark.slow

BOX, APIX, TRAIN_BOX = 48, 2.0, 24


@pytest.fixture(scope="module")
def trained(trained_hinge, tmp_path_factory):
    """The session's trained hinge (tests/conftest.py: this module's recipe), its half maps solved here."""
    root = trained_hinge
    _, _, model = load_run(root / "run", device="cpu")
    latents = torch.as_tensor(np.load(root / "run" / "latents.npy"), dtype=torch.float32)
    arm = domain_mask(root / "sim", 2, box=BOX)
    ps = read_particles(root / "sim" / "particles.star")
    rec = tmp_path_factory.mktemp("trained_hinge_rec")
    events = list(solve_half_maps(model, latents, ps, rec, masks={"arm": arm}, iterations=6))
    return root, latents, arm, events[-1].report, rec


def _read(path) -> torch.Tensor:
    return torch.as_tensor(np.array(read_map(path).data, dtype=np.float32))


def test_training_found_the_hinge(trained):
    root, latents, _, _, _ = trained
    coords = np.load(root / "sim" / "truth" / "coords.npy")[:, 0]
    assert abs(spearman(latents[:, 0].numpy(), coords)) >= 0.8
    # the control: the same statistic between the latent and a shuffled truth is near zero
    shuffled = np.random.default_rng(0).permutation(coords)
    assert abs(spearman(latents[:, 0].numpy(), shuffled)) < 0.1


def test_trained_flex_explains_the_data_better_than_rigid(trained):
    report = trained[3]
    for half in ("A", "B"):
        assert report["maps"]["flex"]["objective"][half] < 0.997 * report["maps"]["rigid"]["objective"][half]


def _single_states(sim_dir, coords: np.ndarray) -> list[torch.Tensor]:
    """True density at each hinge coordinate in ``coords`` (the simulator's molecule, public API)."""
    mol, _ = simulated_molecule(sim_dir)
    xyz = deform(mol, coords[:, None], "hinge")  # (s, n_atoms, 3)
    return [render_volume(torch.as_tensor(x, dtype=torch.float32), BOX, APIX, mol.sigma_a) for x in xyz]


def test_trained_flex_is_a_sharper_state_than_rigid(trained):
    root, _, arm, _, rec = trained
    edges = np.linspace(-1.0, 1.0, 26)
    coords = 0.5 * (edges[1:] + edges[:-1])  # 25 states, -0.96 to +0.96
    states = _single_states(root / "sim", coords)
    assert float(torch.corrcoef(torch.stack([states[0].flatten(), states[-1].flatten()]))[0, 1]) < 0.99  # they differ
    average = _read(root / "sim" / "truth" / "average.mrc")
    m = torch.as_tensor(arm)
    shells = slice(4, 12)  # 24 Å to 8.7 Å: where there is signal
    best, to_average = {}, {}
    for mode in ("flex", "rigid"):
        v = 0.5 * (_read(rec / f"{mode}_half_A.mrc") + _read(rec / f"{mode}_half_B.mrc"))
        score = [float(masked_fsc(v, s, APIX, mask=m).curve[shells].mean()) for s in states]
        best[mode] = (max(score), float(coords[int(np.argmax(score))]))
        to_average[mode] = float(masked_fsc(v, average, APIX, mask=m).curve[shells].mean())
    # the flexible map is closer to one state of the motion than the rigid map is to any
    assert best["flex"][0] > best["rigid"][0] + 0.003, (best, to_average)
    # the rigid map is the population average; the flexible one has moved away from it towards a state
    assert to_average["rigid"] - best["rigid"][0] > (to_average["flex"] - best["flex"][0]) + 0.005, (best, to_average)


def test_trained_flex_correlates_past_the_training_nyquist(trained):
    report = trained[3]
    assert report["training_nyquist_a"] == pytest.approx(2 * APIX * BOX / TRAIN_BOX)
    assert report["maps"]["flex"]["global"]["fsc_0143_a"] < report["training_nyquist_a"]
    assert report["maps"]["flex"]["global"]["fsc_0143_a"] <= 1.05 * report["maps"]["rigid"]["global"]["fsc_0143_a"]
