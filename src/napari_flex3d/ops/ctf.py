"""The contrast transfer function, RELION's definition (docs/conventions.md).

A room of ``ops``; it may import ``conventions`` and the rest of ``ops``.

``CTF(k) = sqrt(1 - w^2) sin(chi) + w cos(chi)`` with
``chi = pi * lambda * df(theta) * k^2 - (pi / 2) * Cs * lambda^3 * k^4 + phase_shift``,
``df(theta) = (dU + dV) / 2 + (dU - dV) / 2 * cos(2 (theta - angle))``, ``theta`` the
direction of the frequency vector ``(kx, ky)`` and ``w`` the amplitude contrast. It is
positive at low frequency and multiplies the Fourier transform of a projection.

Layout: unshifted (DC at ``[0, 0]``), ``rfft`` half-plane ``(h, w // 2 + 1)`` by default.
The closed form here is checked against ``torch_ctf.calculate_ctf_2d`` in the tests.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch

from ..conventions import electron_wavelength_a
from .fourier import frequency_axes

__all__ = ["ctf_2d", "apply_ctf", "particle_ctf"]


def _as_batch(x, device, dtype) -> torch.Tensor:
    """Any scalar / array / tensor -> ``(b,)`` tensor (``b`` may be 1)."""
    if isinstance(x, torch.Tensor):
        return x.to(device, dtype).reshape(-1)
    return torch.as_tensor(np.array(x, dtype=np.float64), device=device).to(dtype).reshape(-1)


def ctf_2d(
    box: int,
    apix: float,
    defocus_u_a,
    defocus_v_a,
    defocus_angle_deg,
    voltage_kv,
    cs_mm,
    amplitude_contrast,
    phase_shift_deg=0.0,
    rfft: bool = True,
    device=None,
    dtype=torch.float32,
) -> torch.Tensor:
    """RELION's CTF for a batch of particles.

    Parameters
    ----------
    box, apix
        Image size (pixels) and pixel size (Å).
    defocus_u_a, defocus_v_a, defocus_angle_deg
        ``(b,)`` (or scalars): defocus U/V in Å (positive = underfocus), astigmatism angle
        in degrees from the x axis (``rlnDefocusAngle``).
    voltage_kv, cs_mm, amplitude_contrast, phase_shift_deg
        ``(b,)`` or scalars, in kV, mm, fraction and degrees.
    rfft
        Half-plane ``(b, box, box // 2 + 1)`` if True, else full ``(b, box, box)``; DC at ``[0, 0]``.
    device, dtype
        Used when no argument is a tensor; otherwise the device follows the first tensor.

    Returns
    -------
    ``(b, box, box // 2 + 1)`` real tensor (differentiable in every tensor argument).
    """
    args = (defocus_u_a, defocus_v_a, defocus_angle_deg, voltage_kv, cs_mm, amplitude_contrast, phase_shift_deg)
    for x in args:
        if isinstance(x, torch.Tensor):
            device = x.device if device is None else device
            if x.is_floating_point():
                dtype = x.dtype if x.dtype == torch.float64 else dtype
            break
    if not any(isinstance(x, torch.Tensor) for x in args):
        # every per-particle number in one table: one transfer and one cast, not one per argument
        columns = [np.asarray(x, dtype=np.float64).reshape(-1) for x in args]
        columns[3] = electron_wavelength_a(columns[3])
        table = np.stack(np.broadcast_arrays(*columns))[:, :, None, None]  # (7, b, 1, 1)
        du, dv, angle_deg, lam, cs_mm, w, phase_deg = torch.as_tensor(table, device=device).to(dtype)
    else:
        du, dv, angle_deg, cs_mm, w, phase_deg = (
            _as_batch(x, device, dtype)[:, None, None]
            for x in (defocus_u_a, defocus_v_a, defocus_angle_deg, cs_mm, amplitude_contrast, phase_shift_deg)
        )  # (b, 1, 1)
        if not isinstance(voltage_kv, torch.Tensor):
            lam = torch.as_tensor(electron_wavelength_a(np.asarray(voltage_kv, dtype=np.float64)), device=device)
            lam = lam.to(dtype).reshape(-1, 1, 1)
        else:
            v = voltage_kv.to(device, dtype).reshape(-1, 1, 1) * 1e3
            lam = 12.2642598 / torch.sqrt(v * (1 + 0.978466e-6 * v))  # (b, 1, 1) wavelength, Å

    k2, theta = _polar_grid(int(box), float(apix), bool(rfft), torch.device(device or "cpu"), dtype)  # (h, w')
    df = (du + dv) / 2 + (du - dv) / 2 * torch.cos(2 * (theta - torch.deg2rad(angle_deg)))  # (b, h, w')
    chi = math.pi * lam * df * k2 - (math.pi / 2) * (cs_mm * 1e7) * lam**3 * k2**2 + torch.deg2rad(phase_deg)
    return torch.sqrt(1 - w**2) * torch.sin(chi) + w * torch.cos(chi)


@functools.lru_cache(maxsize=16)
def _polar_grid(box: int, apix: float, rfft: bool, device: torch.device, dtype: torch.dtype):
    """``(|k|^2, direction of (kx, ky))``, both ``(h, w')`` in 1/Å^2 and radians, made once per box,
    pixel size, layout, device and dtype (every minibatch's CTF). Read only."""
    ky, kx = frequency_axes((box, box), d=apix, rfft=rfft, device=device, dtype=dtype)  # (h, 1), (1, w') 1/Å
    return kx**2 + ky**2, torch.atan2(ky, kx)


def apply_ctf(images: torch.Tensor, ctf: torch.Tensor) -> torch.Tensor:
    """Multiply ``images (..., h, w)`` by ``ctf (..., h, w // 2 + 1)`` in Fourier space."""
    if ctf.shape[-2:] != (images.shape[-2], images.shape[-1] // 2 + 1):
        raise ValueError(f"ctf shape {tuple(ctf.shape)} does not fit images {tuple(images.shape)} (need rfft layout)")
    ft = torch.fft.rfftn(images, dim=(-2, -1))
    return torch.fft.irfftn(ft * ctf, s=images.shape[-2:], dim=(-2, -1))


def particle_ctf(ps, idx=None, box: int | None = None, apix: float | None = None, device=None,
                 dtype=torch.float32) -> torch.Tensor:
    """CTFs ``(b, box, box // 2 + 1)`` of particles ``idx`` of a ``ParticleSet``.

    ``box``/``apix`` default to the particles' own; pass a Fourier-cropped box and its
    pixel size (``apix * box_in / box``) to get the CTF of cropped images.
    """
    idx = np.arange(len(ps)) if idx is None else np.asarray(idx)
    box = int(ps.box) if box is None else int(box)
    apix = float(ps.apix) * int(ps.box) / box if apix is None else float(apix)
    groups = [ps.optics[int(g)] for g in np.asarray(ps.optics_group)[idx]]
    return ctf_2d(
        box,
        apix,
        np.asarray(ps.defocus_u_a, dtype=np.float64)[idx],
        np.asarray(ps.defocus_v_a, dtype=np.float64)[idx],
        np.asarray(ps.defocus_angle_deg, dtype=np.float64)[idx],
        np.array([g.voltage_kv for g in groups], dtype=np.float64),
        np.array([g.cs_mm for g in groups], dtype=np.float64),
        np.array([g.amplitude_contrast for g in groups], dtype=np.float64),
        np.asarray(ps.phase_shift_deg, dtype=np.float64)[idx],
        device=device,
        dtype=dtype,
    )
