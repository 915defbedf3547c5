"""``flex3d analyze RUN``: every analysis of a trained run, written to one folder with one HTML page.

:func:`analyze_run` reads the run (``model.run``), its particles and latents once, and
writes into ``RUN/analysis`` (or ``out_dir``):

- ``particles.csv``: one row per particle (latents, defocus, angles, viewing direction,
  optics group, half set, file columns, residual, outlier flag, cluster);
- ``artefacts.csv``, ``artefacts.png``: each axis's Spearman with defocus and pose;
- ``landscape.png``, ``bic.png``, ``clusters.csv``, ``clusters/cluster_NNN.mrc`` (the
  convected map at each centre, with ``series.cxc`` for ChimeraX) and
  ``clusters/cluster_NNN.star`` (``.cs`` too for a ``.cs`` input);
- ``outliers.png``, ``outliers.txt`` (0-based rows), ``particles_without_outliers.star`` (``.cs``
  too for a ``.cs`` input) and, printed and in ``summary.json``, the ``flex3d train`` command
  that trains again on them with the run's settings (:mod:`.retrain`);
- ``compare_<name>.csv`` / ``.png`` per ``--compare`` source;
- ``displacement_zK.mrc``, ``strain_zK.mrc``, ``motion.csv``, ``regions.csv`` (with labels);
- ``report.html``, ``summary.json``.

The pieces are the pure functions of :mod:`.covariates`, :mod:`.landscape`,
:mod:`.residuals`, :mod:`.compare` and :mod:`.motion`; this module only reads, calls and
writes. Imports ``io``, ``model``, ``training`` (reading inputs) and ``explore`` (volumes, subsets).
"""

from __future__ import annotations

import dataclasses
import json
import shlex
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd

from ..io.atomic import write_json, write_text
from . import plots
from .compare import compare_latents, match_by_name, particle_names, read_external
from .covariates import ARTEFACT_SPEARMAN, latent_columns, particle_table, pose_artefacts
from .html import write_page
from .landscape import cluster_latents, log_density, projections
from .motion import SIGMA_RANGE, axis_motion, region_table
from .residuals import OUTLIER_Z, outlier_mask, particle_residuals, robust_threshold, robust_z
from .retrain import KEPT_STEM, kept_suffix, retrain_config, retrain_dir, run_mesh, train_argv, write_kept

__all__ = ["DEFAULT_RESIDUAL_BOX", "analyze_run", "read_run_particles", "residual_box_for", "write_clusters"]

DEFAULT_RESIDUAL_BOX = 64  # the residual's box when the run has no latent box: ~(64/128)^3 = 1/8 of the cost at 128


def residual_box_for(config, training_box: int, box=None) -> int:
    """The box the residual is computed at: ``box``, else the run's latent box, else the
    training box capped at :data:`DEFAULT_RESIDUAL_BOX`."""
    if box is not None:
        return min(int(box), training_box)
    if config.latent_box is not None:
        return min(int(config.latent_box), training_box)
    return min(training_box, DEFAULT_RESIDUAL_BOX)


def read_run_particles(config, particles=None, run_dir=None, log=None):
    """``(ParticleSet, path)``: the particles a run trained on (its settings' file, cut to its half
    set and particle limit, without the unusable images it left out: ``run_dir``'s record of them
    is read, the stacks only when there is none), or the same rows from ``particles`` (a moved or
    converted file). ``log(line)`` hears of images left out."""
    from ..training.run_state import read_inputs

    if particles is not None:
        config = dataclasses.replace(config, particles=str(particles))
    return read_inputs(config, run_dir, read_only=True, log=log), config.particles


def analyze_run(run_dir, out_dir=None, *, particles=None, clusters="auto", compare=(), labels=None,
                residual_box=None, batch: int = 256, device="cpu", outlier_z: float = OUTLIER_Z,
                artefact_threshold: float = ARTEFACT_SPEARMAN, sigma_range: float = SIGMA_RANGE,
                progress=None) -> dict:
    """Analyse the run in ``run_dir`` into ``out_dir`` (default ``run_dir/analysis``); returns the summary.

    ``particles``: the run's particle file (default the one it trained on; the same rows,
    e.g. after moving the project); ``clusters``: "auto" or a number; ``compare``: sources
    for :func:`.compare.read_external`; ``labels``: a label volume (MRC) of painted regions
    on the consensus map's grid; ``residual_box``: see :func:`residual_box_for`;
    ``progress(message)`` is called at each stage.
    """
    from ..explore.generate import RunVolumes

    say = progress or (lambda message: None)
    run_dir = Path(run_dir)
    out = Path(out_dir) if out_dir is not None else run_dir / "analysis"
    out.mkdir(parents=True, exist_ok=True)
    clock = _Clock()
    with clock("read"):
        volumes = RunVolumes(run_dir, device=device)
        if labels is not None:  # before minutes of work: a label volume made for another map
            from ..io.mrc import read_header
            from ..io.values import require_same_extent

            head = read_header(labels)
            require_same_extent(f"{labels}: label volume", (head.nz, head.ny, head.nx), float(head.voxel_size_xyz[0]),
                                volumes.box, volumes.apix)
        config = volumes.config
        ps, particle_file = read_run_particles(config, particles, run_dir, log=say)
        z = volumes.latents.astype(np.float64)
        if len(z) != len(ps):
            raise ValueError(f"{run_dir}: {len(z)} latents but {len(ps)} particles in {particle_file}")
    say("per-particle residuals")
    with clock("residual"):
        rbox = residual_box_for(config, volumes.box, residual_box)
        residual = particle_residuals(run_dir, ps, z, box=rbox, batch=batch, device=device)
        table = particle_table(z, ps, residual)
    blocks = [("p", f"Run {run_dir}: {len(ps)} particles from {particle_file}, K = {z.shape[1]} latent "
                    f"dimensions, training box {volumes.box} ({volumes.apix:.3g} Å/px).")]
    summary = {"run": str(run_dir), "out": str(out), "n_particles": len(ps), "latent_dim": int(z.shape[1]),
               "residual_box": rbox}
    say("pose and defocus artefacts")
    with clock("artefacts"):
        blocks += _artefacts(table, out, artefact_threshold, summary)
    say("landscape and clusters")
    with clock("clusters"):
        blocks += _landscape(z, table, ps, volumes, out, clusters, summary)
    say("outliers")
    with clock("outliers"):
        blocks += _outliers(table, ps, out, outlier_z, summary, config, run_dir, say)
    if compare:
        say("comparison with other tools")
        with clock("compare"):
            blocks += _compare(z, ps, compare, particle_file, out, summary)
    say("displacement and strain")
    with clock("motion"):
        blocks += _motion(volumes, z, out, labels, sigma_range, summary)
    write_text(out / "particles.csv", table.to_csv(index_label="row"))
    summary["timings_s"], summary["cpu_s"] = clock.totals()
    write_json(out / "summary.json", summary, indent=2, default=str)
    write_page(out / "report.html", "napari-flex3d analysis", blocks)
    say(f"wrote {out / 'report.html'}")
    return summary


class _Clock:
    """Wall and CPU seconds per stage. The CPU time is this process's (all its threads): on a
    shared machine the wall time includes waiting for the cores, the CPU time does not."""

    def __init__(self):
        self.wall, self.cpu = {}, {}
        self._start = (time.perf_counter(), time.process_time())

    @contextmanager
    def __call__(self, name: str):
        t, c = time.perf_counter(), time.process_time()
        yield
        self.wall[name], self.cpu[name] = time.perf_counter() - t, time.process_time() - c

    def totals(self) -> tuple[dict, dict]:
        wall = {k: round(v, 3) for k, v in self.wall.items()} | {"total": round(time.perf_counter() - self._start[0], 3)}
        cpu = {k: round(v, 3) for k, v in self.cpu.items()} | {"total": round(time.process_time() - self._start[1], 3)}
        return wall, cpu


def _artefacts(table, out, threshold, summary) -> list:
    flags = pose_artefacts(table, threshold)
    matrix = flags.attrs["matrix"]
    write_text(out / "artefacts.csv", flags.to_csv(index=False))
    write_text(out / "artefacts_matrix.csv", matrix.to_csv())
    png = plots.matrix_figure(matrix.to_numpy(), list(matrix.index), list(matrix.columns), out / "artefacts.png",
                              "Spearman: latent axes x nuisances", threshold)
    xy = projections(table[latent_columns(len(matrix))].to_numpy())[0]
    colours = {c: table[c].to_numpy() for c in ("defocus_a", "rot_deg", "tilt_deg", "psi_deg", "view_x", "view_y",
                                                "view_z", "optics_group", "half_set", "residual") if c in table}
    colours.update(_new_file_columns(table, colours, 16 - len(colours)))
    scatter = plots.coloured_scatters(xy[2], colours, out / "colour_by.png", xy[0], xy[1])
    flagged = flags[flags["flagged"]]
    summary["artefacts"] = flags.to_dict("records")
    blocks = [("h2", "1. Is an axis a pose or defocus artefact?")]
    for _, row in flagged.iterrows():
        blocks.append(("warn", f"Axis {row['axis']} tracks {row['covariate']} (Spearman {row['spearman']:+.2f}, above "
                               f"{threshold}): it may be a pose or defocus artefact, not motion."))
    if flagged.empty:
        blocks.append(("ok", f"No latent axis has |Spearman| above {threshold} with defocus or pose."))
    return blocks + [("table", flags), ("img", png), ("h3", "Latents coloured by each per-particle value"), ("img", scatter)]


def _new_file_columns(table, shown: dict, limit: int) -> dict:
    """Numeric columns of the input file that say something the shown ones do not (a file's
    own angles and defocus rank exactly as ours: |Spearman| > 0.999 drops them), at most ``limit``."""
    from .covariates import spearman_matrix

    cols = [c for c in table.columns if c.startswith("file:") and table[c].nunique() > 1]
    if not cols or limit <= 0:
        return {}
    r = spearman_matrix(table[cols].to_numpy(), np.stack(list(shown.values()), axis=1))
    return {c: table[c].to_numpy() for c, row in zip(cols, r) if np.abs(row).max() <= 0.999}


def write_clusters(volumes, ps, centres, labels, folder, box: int | None = None):
    """The convected map at each cluster centre and each cluster's particles, in ``folder``.

    ``centres (c, K)``, ``labels (n,)`` the cluster of each particle of ``ps``: writes
    ``cluster_NNN.mrc`` with ``series.cxc`` (ChimeraX plays them as a series) and
    ``cluster_NNN.star`` (and ``.cs`` for a ``.cs`` input) per non-empty cluster. Returns
    ``(map paths, script path, subset paths)``.
    """
    from ..explore.generate import write_latent_series
    from ..explore.subsets import write_subset

    _, _, maps, script = write_latent_series(volumes, centres, folder, box=box, prefix="cluster",
                                             label="flex3d cluster centre")
    suffixes = [".star"] + ([".cs"] if ps.records is not None else [])
    subsets = []
    for c in range(len(centres)):
        members = np.flatnonzero(np.asarray(labels) == c)
        if len(members):
            subsets += [write_subset(ps, members, Path(folder) / f"{maps[c].stem}{suffix}") for suffix in suffixes]
    return maps, script, subsets


def _landscape(z, table, ps, volumes, out, clusters, summary) -> list:
    views = projections(z)
    result = cluster_latents(z, clusters)
    table["cluster"] = result.labels
    k_dim = z.shape[1]
    panels, centres = [], []
    for xl, yl, xy in views[: 4 if k_dim >= 2 else 1]:
        panels.append((xl, yl, *log_density(xy)))
        centres.append(_centres_in_view(result.centres, z, xl, yl))
    dens = plots.density_figure(panels, out / "landscape.png", centres)
    bic = plots.bic_figure(result.bic, len(result.centres), out / "bic.png")
    # the centres' maps as a series ChimeraX plays (clusters/series.cxc), the subsets beside them
    maps, _, _ = write_clusters(volumes, ps, result.centres, result.labels, out / "clusters")
    rows = []
    for c, centre in enumerate(result.centres):
        rows.append({"cluster": c, "particles": int(result.counts[c]),
                     **{f"z{i + 1}": float(v) for i, v in enumerate(centre)}, "map": f"clusters/{maps[c].name}"})
    frame = pd.DataFrame(rows)
    write_text(out / "clusters.csv", frame.to_csv(index=False))
    summary["clusters"] = {"method": result.method, "n": len(result.centres), "counts": result.counts.tolist(),
                           "bic": [None if np.isnan(b) else float(b) for b in result.bic]}
    text = (f"{len(result.centres)} clusters ({'Gaussian mixture, size chosen by the BIC' if result.method == 'gmm' else 'k-means'}"
            f"); each centre's convected map is clusters/cluster_NNN.mrc (clusters/series.cxc plays them in "
            f"ChimeraX) and its particles clusters/cluster_NNN.star.")
    return [("h2", "2. Landscape and clusters"), ("img", dens), ("p", text), ("table", frame), ("img", bic)]


def _centres_in_view(centres, z, xl, yl):
    """Cluster centres in a projection's coordinates (axis pairs; PCA; none for K = 1's rank view)."""
    if xl.startswith("PC"):
        mean = z.mean(0)
        _, _, vt = np.linalg.svd(z - mean, full_matrices=False)
        return (centres - mean) @ vt[:2].T
    if yl.startswith("z"):
        return centres[:, [int(xl[1:]) - 1, int(yl[1:]) - 1]]
    return None


def _outliers(table, ps, out, z_threshold, summary, config, run_dir, say) -> list:
    residual, norm = table["residual"].to_numpy(), table["latent_norm"].to_numpy()
    mask = outlier_mask(residual, norm, z_threshold)
    table["residual_robust_z"], table["latent_norm_robust_z"] = robust_z(residual), robust_z(norm)
    table["outlier"] = mask
    rows = np.flatnonzero(mask)
    np.savetxt(out / "outliers.txt", rows, fmt="%d", header="0-based rows of the run's particle file: outliers")
    thresholds = {"residual": robust_threshold(residual, z_threshold), "latent_norm": robust_threshold(norm, z_threshold)}
    png = plots.histogram_figure({"residual": residual, "latent_norm": norm}, thresholds, out / "outliers.png")
    summary["outliers"] = {"n": int(mask.sum()), "robust_z": z_threshold, "residual_median": float(np.median(residual)),
                           "thresholds": thresholds}
    text = (f"{int(mask.sum())} of {len(mask)} particles have a residual or latent norm with robust z above "
            f"{z_threshold} (median residual {np.median(residual):.3f}; 1 = only noise).")
    if mask.all():
        return [("h2", "3. Outliers"), ("warn", text + " Nothing is left to train on."), ("img", png)]
    # the kept particles as STAR, and as .cs too for a .cs input (every cryoSPARC field kept)
    for suffix in dict.fromkeys([".star", kept_suffix(ps)]):
        kept_path, _ = write_kept(ps, mask, out / f"{KEPT_STEM}{suffix}")
    mesh = run_mesh(run_dir)
    retrain = retrain_config(config, kept_path.resolve(), retrain_dir(run_dir).resolve(), mesh and mesh.resolve())
    command = shlex.join(train_argv(retrain))
    summary["outliers"]["kept_file"], summary["outliers"]["retrain_command"] = str(kept_path), command
    say(f"to train again without the {int(mask.sum())} outliers: {command}")
    text += f" To train again without them, with the run's settings: {command}"
    return [("h2", "3. Outliers"), ("p", text), ("img", png)]


def _compare(z, ps, sources, particle_file, out, summary) -> list:
    ours_names = particle_names(ps)
    blocks, summary["compare"] = [("h2", "4. Comparison with other tools")], []
    for source in sources:
        ext = read_external(source, default_names=particle_file)
        ours_rows, their_rows = match_by_name(ours_names, ext.names)
        if len(ours_rows) < 3:
            raise ValueError(f"--compare {source}: only {len(ours_rows)} of its particles match ours by image name")
        ours, theirs = z[ours_rows], ext.values[their_rows]
        result = compare_latents(ours, theirs)
        stem = "compare_" + "".join(ch if ch.isalnum() else "_" for ch in Path(ext.label).stem)
        ours_cols = latent_columns(z.shape[1])
        frame = pd.DataFrame(result["spearman"], index=ours_cols, columns=ext.columns)
        write_text(out / f"{stem}.csv", frame.to_csv())
        mat = plots.matrix_figure(result["spearman"], ours_cols, ext.columns, out / f"{stem}.png",
                                  f"Spearman: ours x {ext.label}")
        xl, yl, xy = projections(z)[0]
        colours = {f"{ext.label}: {c}": theirs[:, i] for i, c in enumerate(ext.columns[:4])}
        scat = plots.coloured_scatters(xy[ours_rows], colours, out / f"{stem}_scatter.png", xl, yl)
        cc = ", ".join(f"{v:.3f}" for v in result["canonical"])
        summary["compare"].append({"source": str(source), "matched": int(len(ours_rows)), "canonical": result["canonical"].tolist()})
        blocks += [("h3", ext.label),
                   ("p", f"{len(ours_rows)} of our {len(z)} particles matched by image name; canonical correlations {cc}."),
                   ("table", frame.reset_index(names="ours")), ("img", mat), ("img", scat)]
    return blocks


def _motion(volumes, z, out, labels, sigma_range, summary) -> list:
    from ..io.mrc import read_map, write_map

    model = volumes.model
    motion = axis_motion(model, z, sigma_range)
    rows = []
    for k in range(z.shape[1]):
        write_map(out / f"displacement_z{k + 1}.mrc", motion["displacement_maps_a"][k], volumes.apix,
                  label=f"flex3d displacement along z{k + 1}, -/+{sigma_range} sd, Angstrom")
        write_map(out / f"strain_z{k + 1}.mrc", motion["strain_maps"][k], volumes.apix,
                  label=f"flex3d strain along z{k + 1}, -/+{sigma_range} sd")
        d, s = motion["vertex_displacement_a"][k], motion["cell_strain"][k]
        rows.append({"axis": f"z{k + 1}", "mean_displacement_a": float(d.mean()), "p95_displacement_a": float(np.percentile(d, 95)),
                     "max_displacement_a": float(d.max()), "mean_strain": float(s.mean()), "max_strain": float(s.max())})
    frame = pd.DataFrame(rows)
    write_text(out / "motion.csv", frame.to_csv(index=False))
    summary["motion"] = rows
    disp = plots.profile_figure(motion["vertex_displacement_a"], out / "displacement.png", "displacement (Å)")
    strain = plots.profile_figure(motion["cell_strain"], out / "strain.png", "strain (0 = rigid)")
    blocks = [("h2", "5. What moved"),
              ("p", f"Between the latents' mean -/+ {sigma_range} sd along each axis. Colour the map in ChimeraX by "
                    "displacement_zK.mrc (Å) or strain_zK.mrc: volume #1 style surface; color sample #1 map #2."),
              ("table", frame), ("img", disp), ("img", strain)]
    if labels is not None:
        lab = read_map(labels)
        regions = region_table(motion["voxel_displacement_a"], model.canonical.points_xyz_a.cpu().numpy(),
                               np.asarray(lab.data), lab.require_apix())
        write_text(out / "regions.csv", regions.to_csv(index=False))
        blocks += [("h3", "Displacement per painted region"), ("table", regions)]
    return blocks
