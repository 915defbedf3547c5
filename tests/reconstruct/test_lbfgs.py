"""The half-map solver's L-BFGS against a direct solve of the same quadratic."""

from __future__ import annotations

import torch

from napari_flex3d.reconstruct.solver import lbfgs_quadratic


class DenseProblem:
    """f(V) = 1/2 |A V - y|^2 with a dense A: the oracle is the normal-equation solve."""

    def __init__(self, n=40, m=120, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.a = torch.randn(m, n, generator=g) * torch.linspace(0.2, 3.0, n)  # ill-conditioned columns
        self.y = torch.randn(m, generator=g)
        self.n_values = n
        self.device = torch.device("cpu")
        self.passes = 0

    def objective_and_gradient(self, v):
        self.passes += 1
        r = self.a @ v - self.y
        return 0.5 * float(r @ r), self.a.T @ r

    def hessian_vector(self, d):
        self.passes += 1
        ad = self.a @ d
        return self.a.T @ ad, float(ad @ ad)


def test_lbfgs_converges_to_the_least_squares_solution():
    p = DenseProblem()
    exact = torch.linalg.lstsq(p.a, p.y[:, None]).solution[:, 0]
    f_exact = 0.5 * float((p.a @ exact - p.y).square().sum())
    losses = []
    for k, f, state in lbfgs_quadratic(p, iterations=60, history=40):
        losses.append(f)
    assert all(b <= a + 1e-6 for a, b in zip(losses, losses[1:])), "objective must not increase"
    assert abs(losses[-1] - f_exact) < 1e-4 * max(1.0, f_exact)
    assert torch.allclose(state["values"], exact, atol=1e-3)
    # tracked objective equals the true objective at the final point
    r = p.a @ state["values"] - p.y
    assert abs(0.5 * float(r @ r) - losses[-1]) < 1e-3
    # one pass per iteration plus the gradient at zero (and one more when it stops converged)
    assert len(losses) + 1 <= p.passes <= len(losses) + 2


def test_resuming_from_a_saved_state_gives_the_same_result():
    p1, p2 = DenseProblem(seed=1), DenseProblem(seed=1)
    full = None
    for _, _, full in lbfgs_quadratic(p1, iterations=12):
        pass
    mid = None
    for k, _, mid in lbfgs_quadratic(p2, iterations=5):
        pass
    for _, _, resumed in lbfgs_quadratic(p2, iterations=12, state=mid):
        pass
    assert torch.allclose(full["values"], resumed["values"], atol=1e-5)
