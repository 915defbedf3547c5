"""Fixtures for the mesh tests: a synthetic two-blob map (64³, 3 Å) and meshes of it."""

from __future__ import annotations

import numpy as np
import pytest

from napari_flex3d.mesh import build_mesh, solvent_mask

BOX = 64
APIX = 3.0


def gaussian_blobs(box: int, apix: float, blobs) -> np.ndarray:
    """``(box, box, box)`` float32 sum of isotropic Gaussians ``(amp, (cx, cy, cz) Å, sigma Å)``."""
    c = (np.arange(box) - box // 2) * apix
    z, y, x = np.meshgrid(c, c, c, indexing="ij")
    vol = np.zeros((box,) * 3)
    for amp, (cx, cy, cz), sigma in blobs:
        vol += amp * np.exp(-((x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2) / (2 * sigma**2))
    return vol.astype(np.float32)


TWO_BLOBS = [(1.0, (-20.0, 0.0, 0.0), 12.0), (0.8, (22.0, 5.0, 0.0), 10.0)]


@pytest.fixture(scope="session")
def two_blob_map() -> np.ndarray:
    return gaussian_blobs(BOX, APIX, TWO_BLOBS)


@pytest.fixture(scope="session")
def two_blob_mask(two_blob_map):
    return solvent_mask(two_blob_map, APIX)


@pytest.fixture(scope="session")
def tetgen_mesh(two_blob_mask):
    return build_mesh(two_blob_mask.binary, APIX, cells_across=20)


@pytest.fixture(scope="session")
def grid_mesh(two_blob_mask):
    return build_mesh(two_blob_mask.binary, APIX, cells_across=20, method="grid")


@pytest.fixture(scope="session", params=["tetgen", "grid"])
def any_mesh(request, tetgen_mesh, grid_mesh):
    return tetgen_mesh if request.param == "tetgen" else grid_mesh


@pytest.fixture(scope="session")
def make_blobs():
    """The :func:`gaussian_blobs` helper, for tests that need other maps."""
    return gaussian_blobs
