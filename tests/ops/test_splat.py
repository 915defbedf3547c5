"""Tests of the fused convect-project operator (ops/splat.py) against independent oracles.

- a dense splat matrix written from the kernels' textbook piecewise formulas (numpy),
- the adjoint identity and finite differences (gradcheck, float64),
- mass conservation,
- the reference projector ``ops.project.project`` (torch-fourier-slice, R = A^T) on a
  band-limited random volume, and a Fourier-shifted map for a uniform flow,
- a single voxel landing where docs/conventions.md says.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_flex3d.conventions import euler_to_matrix, voxel_grid_xyz_a
from napari_flex3d.ops.splat import convect_project, convect_volume

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
KERNEL_NAMES = ["cubic", "linear"]


def _kernel_np(t: np.ndarray, kernel: str) -> np.ndarray:
    """Textbook kernels: cubic B-spline beta3 and the linear hat."""
    a = np.abs(t)
    if kernel == "linear":
        return np.clip(1.0 - a, 0.0, None)
    inner = 2.0 / 3.0 - a**2 + a**3 / 2.0
    outer = (2.0 - a) ** 3 / 6.0
    return np.where(a < 1.0, inner, np.where(a < 2.0, outer, 0.0))


def _dense_splat_matrix(points, rotations, shifts, box, apix, kernel):
    """``(b, box, box, n)`` matrix S: image[b, row, col] = sum_i S[b, row, col, i] v_i."""
    q = np.einsum("bij,nj->bni", rotations, points)  # (b, n, 3)
    x = (q[..., 0] - shifts[:, None, 0]) / apix + box // 2  # (b, n)
    y = (q[..., 1] - shifts[:, None, 1]) / apix + box // 2
    pix = np.arange(box)
    kx = _kernel_np(pix[None, :, None] - x[:, None, :], kernel)  # (b, col, n)
    ky = _kernel_np(pix[None, :, None] - y[:, None, :], kernel)  # (b, row, n)
    return ky[:, :, None, :] * kx[:, None, :, :]


def _random_rotations(b: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    angles = rng.uniform([-180, 0, -180], [180, 180, 180], size=(b, 3))
    return euler_to_matrix(angles[:, 0], angles[:, 1], angles[:, 2])


@pytest.mark.parametrize("kernel", KERNEL_NAMES)
@pytest.mark.parametrize("device", DEVICES)
def test_forward_and_adjoint_match_dense_oracle(kernel, device):
    rng = np.random.default_rng(0)
    box, apix, n, b = 12, 1.7, 40, 3
    # Some points near or beyond the edges: their taps outside the image are dropped.
    points = rng.uniform(-12.0, 12.0, size=(n, 3))
    rotations = _random_rotations(b, 1)
    shifts = rng.normal(0.0, 2.0, size=(b, 2))
    values = rng.normal(size=n)
    s = _dense_splat_matrix(points, rotations, shifts, box, apix, kernel)  # (b, h, w, n)
    expected = s @ values

    t = lambda a: torch.tensor(a, dtype=torch.float64, device=device)  # noqa: E731
    v = t(values).requires_grad_(True)
    images = convect_project(v, t(points), t(rotations), t(shifts), box, apix, kernel)
    assert images.shape == (b, box, box)
    np.testing.assert_allclose(images.detach().cpu().numpy(), expected, atol=1e-10)

    # Adjoint: <S v, g> = <v, S^T g>, with S^T g from the backward pass.
    g = rng.normal(size=(b, box, box))
    (adjoint,) = torch.autograd.grad(images, v, t(g))
    np.testing.assert_allclose(adjoint.cpu().numpy(), np.einsum("bhwn,bhw->n", s, g), atol=1e-10)
    assert np.isclose(float((images.detach() * t(g)).sum()), float((v.detach() * adjoint).sum()), rtol=1e-12)


@pytest.mark.parametrize("kernel", KERNEL_NAMES)
def test_gradcheck_all_inputs(kernel):
    torch.manual_seed(0)
    box, apix, n, b = 6, 1.3, 8, 2
    dt = torch.float64
    values = torch.randn(b, n, dtype=dt, requires_grad=True)
    points = (torch.rand(b, n, 3, dtype=dt) * 6 - 3).requires_grad_(True)  # some taps fall outside
    rotations = torch.tensor(_random_rotations(b, 3), dtype=dt, requires_grad=True)
    shifts = torch.randn(b, 2, dtype=dt, requires_grad=True)

    def f(v, p, r, s):
        return convect_project(v, p, r, s, box, apix, kernel)

    assert torch.autograd.gradcheck(f, (values, points, rotations, shifts), eps=1e-6, atol=1e-6)
    # Shared (n,) values and (n, 3) points are summed over the batch.
    shared = (values[0].detach().requires_grad_(), points[0].detach().requires_grad_(), rotations, shifts)
    assert torch.autograd.gradcheck(f, shared, eps=1e-6, atol=1e-6, fast_mode=True)
    vol_points = (torch.rand(n, 3, dtype=dt) * 6 - 3).requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda v, p: convect_volume(v, p, 6, 1.1, kernel),
        (values[0].detach().requires_grad_(), vol_points),
        eps=1e-6,
        atol=1e-6,
        fast_mode=True,
    )


def _blob_volume(box: int, apix: float):
    """Two positive Gaussian domains well inside the box: ``(box,)*3`` and grid ``(box,)*3 + (3,)`` Å."""
    grid = voxel_grid_xyz_a(box, apix, dtype=torch.float64)
    c1 = torch.tensor([4.0, 0.0, 0.0], dtype=torch.float64) * apix
    vol = torch.exp(-((grid - c1) ** 2).sum(-1) / (2 * (2.5 * apix) ** 2))
    vol = vol + 0.7 * torch.exp(-((grid + c1) ** 2).sum(-1) / (2 * (2.0 * apix) ** 2))
    return vol, grid


@pytest.mark.parametrize("kernel", KERNEL_NAMES)
def test_mass_is_conserved(kernel):
    box, apix = 32, 2.0
    vol, grid = _blob_volume(box, apix)
    inside = vol > 1e-3
    values, y = vol[inside], grid[inside]  # (n,), (n, 3)
    # A smooth non-uniform flow (a bend plus a twist), up to ~3 voxels: density stays inside.
    flow = torch.stack(
        [torch.sin(y[:, 1] / 9.0), 0.5 * y[:, 2] / 9.0, torch.cos(y[:, 0] / 7.0)], dim=-1
    ) * (2.0 * apix)
    moved = y + flow
    mass = float(values.sum())
    w = convect_volume(values, moved, box, apix, kernel)
    assert w.shape == (box, box, box)
    assert w.sum().item() == pytest.approx(mass, rel=1e-10)
    # and the flow really moved the density: W differs from the unmoved splat
    assert (w - convect_volume(values, y, box, apix, kernel)).abs().max() > 0.05 * w.max()
    rotations = torch.tensor(_random_rotations(4, 5))
    shifts = torch.tensor([[1.0, -2.0], [0.0, 0.0], [3.3, 0.7], [-2.5, 1.5]], dtype=torch.float64)
    images = convect_project(values, moved, rotations, shifts, box, apix, kernel)
    np.testing.assert_allclose(images.sum((-1, -2)).numpy(), mass, rtol=1e-10)
    # A point far outside is dropped (no wrap-around, no pile-up at the border).
    far = convect_project(values[:1], torch.tensor([[500.0, -3.0, 0.0]], dtype=torch.float64), rotations[:1], None, box, apix, kernel)
    assert far.abs().max() == 0


def test_single_voxel_lands_where_design_says():
    """docs/conventions.md: r appears at (A r)_xy - shift from pixel N//2, image [row=y, col=x]."""
    box, apix = 16, 2.5
    c = box // 2
    # A = euler_to_matrix(90, 0, 0) = [[0, 1, 0], [-1, 0, 0], [0, 0, 1]] (RELION's passive Rz(90)).
    rotations = torch.tensor(euler_to_matrix(90.0, 0.0, 0.0))[None]
    r = torch.tensor([[5.0, 2.0, 1.0]], dtype=torch.float64) * apix  # voxel (z, y, x) = (c+1, c+2, c+5)
    shifts = torch.tensor([[1.0, -3.0]], dtype=torch.float64) * apix
    # A r = (2, -5, 1) voxels; minus the shift: (x, y) = (1, -2) -> col c+1, row c-2.
    row, col = c - 2, c + 1
    linear = convect_project(torch.ones(1, dtype=torch.float64), r, rotations, shifts, box, apix, "linear")[0]
    expected = torch.zeros(box, box, dtype=torch.float64)
    expected[row, col] = 1.0
    torch.testing.assert_close(linear, expected)
    cubic = convect_project(torch.ones(1, dtype=torch.float64), r, rotations, shifts, box, apix, "cubic")[0]
    taps = torch.tensor([1.0, 4.0, 1.0], dtype=torch.float64) / 6.0  # beta3 at -1, 0, 1
    expected = torch.zeros(box, box, dtype=torch.float64)
    expected[row - 1 : row + 2, col - 1 : col + 2] = taps[:, None] * taps[None, :]
    torch.testing.assert_close(cubic, expected)
    # The 3D splat puts the voxel back where it came from: (z, y, x) = (c+1, c+2, c+5).
    vol = convect_volume(torch.ones(1, dtype=torch.float64), r[0][None], box, apix, "linear")
    assert vol[c + 1, c + 2, c + 5] == 1.0 and vol.sum() == 1.0


def _band_limited_volume(box: int, seed: int, cutoff: float = 0.45) -> torch.Tensor:
    """Gaussian random volume in a soft sphere, low-passed to ``cutoff`` cycles/voxel."""
    gen = torch.Generator().manual_seed(seed)
    radius = voxel_grid_xyz_a(box, 1.0, dtype=torch.float64).norm(dim=-1)
    vol = torch.randn((box,) * 3, generator=gen, dtype=torch.float64) * ((0.38 * box - radius) / 3).clamp(0, 1)
    freq = torch.stack(torch.meshgrid(*[torch.fft.fftfreq(box, dtype=torch.float64)] * 3, indexing="ij"), -1)
    return torch.fft.ifftn(torch.fft.fftn(vol) * (freq.norm(dim=-1) <= cutoff)).real


def _frc(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Fourier ring correlation ``(b, box//2 + 1)`` (integer shells)."""
    fa, fb = torch.fft.fftshift(torch.fft.fft2(a), dim=(-2, -1)), torch.fft.fftshift(torch.fft.fft2(b), dim=(-2, -1))
    box = a.shape[-1]
    k = torch.arange(box) - box // 2
    shell = torch.sqrt(k[:, None] ** 2 + k[None, :] ** 2.0).round().long().clamp(max=box // 2).flatten()
    num = torch.zeros(a.shape[0], box // 2 + 1, dtype=torch.float64).index_add_(1, shell, (fa * fb.conj()).real.flatten(1))
    pa = torch.zeros_like(num).index_add_(1, shell, fa.abs().square().flatten(1))
    pb = torch.zeros_like(num).index_add_(1, shell, fb.abs().square().flatten(1))
    return num / torch.sqrt(pa * pb)


@pytest.mark.parametrize("kernel,threshold", [("cubic", 0.99), ("linear", 0.97)])
def test_zero_flow_matches_reference_projector(kernel, threshold):
    from napari_flex3d.ops.project import project  # Fourier slice, pad 2 (torch-fourier-slice, R = A^T)

    box, apix = 40, 1.4
    vol = _band_limited_volume(box, seed=0)
    rotations = torch.tensor(_random_rotations(4, 7))
    shifts = torch.tensor([[0.0, 0.0], [1.3, -0.4], [-2.1, 0.9], [0.5, 2.2]], dtype=torch.float64)
    reference = project(vol.float(), rotations.float(), shifts.float(), apix).double()
    points = voxel_grid_xyz_a(box, apix, dtype=torch.float64).reshape(-1, 3)  # (n, 3)
    images = convect_project(vol.reshape(-1), points, rotations, shifts, box, apix, kernel)
    shells = slice(1, int(0.8 * box / 2) + 1)  # up to 0.8 Nyquist, where the volume holds signal
    frc = _frc(images, reference)[:, shells]
    assert frc.min() > threshold, frc.min()
    # Sanity of the oracle: a transposed pose does not match.
    wrong = convect_project(vol.reshape(-1), points, rotations.transpose(-1, -2), shifts, box, apix, kernel)
    assert _frc(wrong, reference)[:, shells].mean() < 0.5


def test_uniform_flow_is_a_shift_of_the_map():
    box, apix = 32, 1.6
    vol = _band_limited_volume(box, seed=1, cutoff=0.3)
    rotations = torch.tensor(_random_rotations(3, 11))
    points = voxel_grid_xyz_a(box, apix, dtype=torch.float64).reshape(-1, 3)
    # Whole voxels: exactly the projection of the rolled map (content stays inside the box).
    inner = vol * (voxel_grid_xyz_a(box, 1.0, dtype=torch.float64).norm(dim=-1) < 0.3 * box)
    t_vox = (2, -1, 3)  # (x, y, z)
    moved = convect_project(inner.reshape(-1), points + torch.tensor(t_vox, dtype=torch.float64) * apix, rotations, None, box, apix)
    rolled = torch.roll(inner, shifts=(t_vox[2], t_vox[1], t_vox[0]), dims=(0, 1, 2))
    torch.testing.assert_close(moved, convect_project(rolled.reshape(-1), points, rotations, None, box, apix))
    # Sub-voxel: the reference projection of the Fourier-shifted map.
    from torch_fourier_slice import project_3d_to_2d

    t_a = torch.tensor([0.37, -0.81, 0.55], dtype=torch.float64) * apix  # (x, y, z) Å
    freq = torch.meshgrid(*[torch.fft.fftfreq(box, d=apix, dtype=torch.float64)] * 3, indexing="ij")  # (z, y, x)
    phase = torch.exp(-2j * torch.pi * (freq[2] * t_a[0] + freq[1] * t_a[1] + freq[0] * t_a[2]))
    shifted = torch.fft.ifftn(torch.fft.fftn(vol) * phase).real
    reference = project_3d_to_2d(shifted.float(), rotations.float().transpose(-1, -2), pad_factor=2.0).double()
    images = convect_project(vol.reshape(-1), points + t_a, rotations, None, box, apix)
    assert _frc(images, reference)[:, 1 : int(0.6 * box / 2) + 1].min() > 0.99
    unshifted = project_3d_to_2d(vol.float(), rotations.float().transpose(-1, -2), pad_factor=2.0).double()
    assert _frc(images, unshifted)[:, int(0.5 * box / 2)].max() < 0.95  # the shift is visible


def test_deconvolve_sharpens_and_keeps_mass():
    box, apix = 24, 2.0
    vol, grid = _blob_volume(box, apix)
    values, y = vol.reshape(-1), grid.reshape(-1, 3)
    rotations = torch.tensor(_random_rotations(2, 2))
    blurred = convect_project(values, y, rotations, None, box, apix, "cubic")
    sharp = convect_project(values, y, rotations, None, box, apix, "cubic", deconvolve=True)
    torch.testing.assert_close(sharp.sum((-1, -2)), blurred.sum((-1, -2)))
    assert (sharp.amax((-1, -2)) > blurred.amax((-1, -2))).all()


def test_chunks_and_tap_layouts_agree(monkeypatch):
    """Particles split into many chunks, and one scatter per y-tap (per (z, y)-tap in 3D) instead of
    one for all (y, x)-taps, give the same images, volumes and gradients."""
    import napari_flex3d.ops.splat as splat

    torch.manual_seed(1)
    box, apix, n, b = 16, 1.5, 50, 7
    values = torch.randn(b, n, requires_grad=True)
    points = (torch.rand(b, n, 3) * 20 - 10).requires_grad_(True)
    rotations = torch.tensor(_random_rotations(b, 4), dtype=torch.float32, requires_grad=True)

    def run():
        images = convect_project(values, points, rotations, None, box, apix)
        grads = torch.autograd.grad((images * torch.linspace(-1, 1, box)).sum(), (values, points, rotations))
        volume = convect_volume(values[0], points[0], box, apix)
        vol_grads = torch.autograd.grad((volume * torch.linspace(-1, 1, box)).sum(), (values, points))
        return (images, volume) + grads + vol_grads

    whole = run()
    assert splat._chunk_plan(n, box + 8, 4, 3, torch.device("cpu")) == (splat._CHUNK_FLOATS["cpu"] // 223984, 2)
    monkeypatch.setattr(splat, "_CHUNK_FLOATS", {"cpu": 1, "cuda": 1})  # chunks of 1 particle, taps of x only
    assert splat._chunk_plan(n, box + 8, 4, 3, torch.device("cpu")) == (1, 1)
    for a, c in zip(whole, run()):
        torch.testing.assert_close(a, c)


def test_bad_input_raises():
    v, p, r = torch.zeros(5), torch.zeros(5, 3), torch.eye(3)[None]
    with pytest.raises(ValueError, match="kernel"):
        convect_project(v, p, r, None, 8, 1.0, "quintic")
    with pytest.raises(ValueError, match="points_xyz_a"):
        convect_project(v, torch.zeros(4, 3), r, None, 8, 1.0)
    with pytest.raises(ValueError, match="rotations"):
        convect_project(v, p, torch.eye(3), None, 8, 1.0)
    with pytest.raises(ValueError, match="shifts_a"):
        convect_project(v, p, r, torch.zeros(2, 2), 8, 1.0)
