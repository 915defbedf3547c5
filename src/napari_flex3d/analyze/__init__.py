"""Reading a trained run: pose artefacts, landscape and clusters, outliers, other tools' latents, what moved.

A feature room (L2): pure functions on latent tables and a run's model, and
:func:`~.pipeline.analyze_run`, which writes them all into ``RUN/analysis`` with one HTML
page (``flex3d analyze``; docs/analysis.md, "Reading the analysis report"). The napari
explorer calls the same functions. May import config, core (io, ops, mesh, model) and the
features ``training`` (readers, spectra, schedule) and ``explore`` (volumes, subsets).
"""

from .compare import compare_latents, match_by_name, particle_names, read_external
from .covariates import ARTEFACT_SPEARMAN, particle_table, pose_artefacts, spearman_matrix
from .landscape import cluster_latents, log_density, projections
from .motion import axis_motion, cell_strain, region_table
from .pipeline import analyze_run, write_clusters
from .residuals import OUTLIER_Z, outlier_mask, particle_residuals, robust_z

__all__ = [
    "ARTEFACT_SPEARMAN", "OUTLIER_Z", "analyze_run", "axis_motion", "cell_strain", "cluster_latents", "compare_latents",
    "log_density", "match_by_name", "outlier_mask", "particle_names", "particle_residuals", "particle_table",
    "pose_artefacts", "projections", "read_external", "region_table", "robust_z", "spearman_matrix", "write_clusters",
]
