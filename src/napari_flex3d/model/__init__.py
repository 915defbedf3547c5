"""The 3DFlex model: flow generator, canonical map, composed forward model, objective.

A core room: may import ``config``, ``conventions``, ``io``, ``mesh`` and ``ops``; never a
feature room. See :mod:`napari_flex3d.model.flex` for how to train it.
"""

from .canonical import CanonicalMap, bandlimit
from .flex import FlexModel, batch_from_particles, particle_noise_spectra
from .flow import FlowGenerator, interpolate_vertex_flow
from .loss import data_loss, estimate_noise_spectra, estimate_noise_spectrum, fit_scale, total_loss

__all__ = [
    "CanonicalMap",
    "FlexModel",
    "FlowGenerator",
    "bandlimit",
    "batch_from_particles",
    "data_loss",
    "estimate_noise_spectra",
    "estimate_noise_spectrum",
    "fit_scale",
    "interpolate_vertex_flow",
    "particle_noise_spectra",
    "total_loss",
]
