"""Every file of testdata/formats is either read or refused with a clear message (none is forgotten)."""

from __future__ import annotations

import warnings

import pytest

from napari_flex3d.io.info import describe
from io_fixtures import fmt  # noqa: F401 (pytest fixtures)

READ = {
    # particle files: (format, n particles)
    "cryodrgn/FinalRefinement-OriginalParticles-PfCRT.star": ("relion3.0", 5),
    "cryodrgn/cryosparc_J2_particles_exported.cs": ("cryosparc", 22),
    "cryodrgn/cryosparc_P12_J24_001_particles.cs": ("cryosparc", 2019),
    "cryodrgn/empiar_10076_7.cs": ("cryosparc", 7),
    "cryodrgn/empiar_10076_7.star": ("relion3.0", 7),
    "cryodrgn/relion31.6opticsgroups.star": ("relion3.1", 139),
    "cryodrgn/relion31.star": ("relion3.1", 5),
    "cryodrgn/relion31.v2.star": ("relion3.1", 5),
    "cryodrgn/relion5.star": ("relion3.1", 17),
    "cryodrgn/toy_projections_13.star": ("relion3.1", 13),
    "relion/ref_it002_data.star": ("relion3.0", 9),
    "simplecryoem/pyem.star": ("relion3.1", 24),
    "simplecryoem/pyem_onerow.star": ("relion3.1", 1),
    "simplecryoem/relion_proj_batch.star": ("relion3.1", 24),
    "simplecryoem/relion_proj_batch_pfac2.star": ("relion3.1", 24),
    # maps and stacks: (mode, shape zyx)
    "MRCFile.jl/emd_3197_f16.mrc": (12, [20, 20, 20]),
    "MRCFile.jl/emd_3197_proj.mrcs": (2, [10, 20, 20]),
    "cryodrgn/empiar_10076_7.mrc": (2, [7, 320, 320]),
    "cryodrgn/relion31.mrcs": (2, [5, 256, 256]),
    "cryodrgn/spike-vol.mrc": (2, [128, 16, 16]),
    "cylindra/beta-tubulin.mrc": (2, [20, 20, 20]),
    "mrcfile/EMD-3001.map": (2, [73, 25, 43]),
    "mrcfile/EMD-3197.map": (2, [20, 20, 20]),
    "mrcfile/emd_3197.map.gz": (2, [20, 20, 20]),
    "relion/ref_shifted_image.mrc": (2, [1, 32, 32]),
    "simplecryoem/pointmass.mrc": (2, [64, 64, 64]),
    "simplecryoem/relion_proj_batch.mrcs": (2, [24, 64, 64]),
    "simplecryoem/relion_proj_batch_pfac2.mrcs": (2, [24, 64, 64]),
}

REFUSED = {
    "cryoCAT/relion_3.1_optics2.star": "sub-tomogram particles",
    "cylindra/run_it050_data.star": "sub-tomogram particles",
    "cryosparc-tools/4k_dataset.cs": "zero particles",
    "cylindra/job.star": "not a particle STAR file",
    "starfile/basic_double_quote.star": "not a particle STAR file",
    "starfile/empty_loop.star": "not a particle STAR file",
    "starfile/loop_double_quote.star": "not a particle STAR file",
    "starfile/postprocess.star": "not a particle STAR file",
    "starfile/run_it025_optimiser_3D.star": "not a particle STAR file",
    "starfile/two_single_line_loop_blocks.star": "not a particle STAR file",
    "starfile/rln3.1_data_style.star": "missing column rlnDefocusU",
}

NOT_DATA = ("LICENSE", "LICENSE.txt", "LICENSE.md", "COPYING", "README.md")


def test_every_file_is_classified(fmt):
    files = {str(p.relative_to(fmt)) for p in fmt.rglob("*") if p.is_file() and p.name not in NOT_DATA}
    assert files == set(READ) | set(REFUSED), "a new test file needs a READ or REFUSED entry"


@pytest.mark.parametrize("name", sorted(READ))
def test_read(fmt, name):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        s = describe(fmt / name)
    if s["kind"] == "particles":
        assert (s["format"], s["n_particles"]) == READ[name]
    else:
        assert (s["mode"], s["shape_zyx"]) == READ[name]


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_refused(fmt, name):
    with pytest.raises(ValueError, match=REFUSED[name]):
        describe(fmt / name)
