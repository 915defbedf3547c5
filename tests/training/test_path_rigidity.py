"""``--rigidity-path``: half the rigidity prior at latents between random pairs of the minibatch."""

from __future__ import annotations

import torch

from napari_flex3d.training.step import path_latents


def test_path_latents_lie_on_segments_to_another_row():
    z = torch.randn(9, 2, generator=torch.Generator().manual_seed(1))
    path = path_latents(z, torch.Generator().manual_seed(2))
    assert path.shape == z.shape and not path.requires_grad
    for i in range(len(z)):  # m = n: never the row itself
        found = False
        for j in range(len(z)):
            if j == i:
                continue
            d = z[j] - z[i]
            u = float((path[i] - z[i]) @ d / (d @ d))
            if 0.0 <= u <= 1.0 and torch.allclose(z[i] + u * d, path[i], atol=1e-6):
                found = True
        assert found, f"row {i} is not between z[{i}] and another row"
    again = path_latents(z, torch.Generator().manual_seed(2))
    assert torch.equal(path, again)  # the run's generator makes it reproducible
    assert not torch.equal(path, path_latents(z, torch.Generator().manual_seed(3)))


def test_the_step_prior_is_half_at_the_particles_and_half_between(tiny_sim, tiny_config, tmp_path):
    """The warm-up step's reported rigidity is the mean of the energy at the particles' noisy
    latents and at the path latents drawn next from the run's generator; off, the particles' alone."""
    from napari_flex3d.training.run_state import new_run
    from napari_flex3d.training.schedule import WARMUP
    from napari_flex3d.training.step import train_step

    figures = {}
    for on in (False, True):
        out = tmp_path / f"run_{on}"
        cfg = tiny_config(tiny_sim, out, rigidity_path=on, rigidity_choice="fixed", rigidity_lambda=0.5)
        run = new_run(cfg, out, torch.device("cpu"), write_files=False)
        with torch.no_grad():  # a flow that bends: the prior is not zero anywhere
            for p in run.model.flow.parameters():
                p.add_(0.3 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
        idx = run.train_idx[:16]
        g = torch.Generator()
        g.set_state(run.generator.get_state())
        z = run.latents[torch.as_tensor(idx)] + torch.randn((len(idx), 1), generator=g) * cfg.latent_noise
        with torch.no_grad():
            at_particles = run.model.rigidity(z).mean()
            between = run.model.rigidity(path_latents(z, g)).mean()
        total, _, rigid = train_step(run, idx, WARMUP, band=0.5)
        figures[on] = float(rigid)
        expected = 0.5 * (at_particles + between) if on else at_particles
        assert abs(float(rigid) - float(expected)) <= 1e-5 * float(expected), (on, float(rigid), float(expected))
    assert figures[True] != figures[False]


def test_micro_batches_see_the_same_path_latents(tiny_sim, tiny_config, tmp_path):
    """The path latents are drawn once a step: a minibatch split into micro-batches takes the
    same step (losses and the flow's weights after it) as the whole one."""
    from napari_flex3d.training.run_state import new_run
    from napari_flex3d.training.schedule import WARMUP
    from napari_flex3d.training.step import train_step

    after = {}
    for micro in (None, 5):
        out = tmp_path / f"run_{micro}"
        cfg = tiny_config(tiny_sim, out, rigidity_path=True, rigidity_choice="fixed", rigidity_lambda=0.5,
                          micro_batch=micro)
        run = new_run(cfg, out, torch.device("cpu"), write_files=False)
        losses = train_step(run, run.train_idx[:16], WARMUP, band=0.5)
        after[micro] = (losses, [p.detach().clone() for p in run.model.flow.parameters()])
    torch.testing.assert_close(after[5][0], after[None][0], rtol=1e-6, atol=0)
    for a, b in zip(after[5][1], after[None][1]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)  # Adam's first step divides by |g|
