"""The ``flex3d`` command line: each sub-command is a few lines over :mod:`napari_flex3d.api`.

Layer L3: imports ``api`` and ``config``; nothing imports it but the ``flex3d`` entry point.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

# Idle OpenMP threads sleep instead of spinning (set before torch is imported): on a busy
# machine spinning threads cost several times the CPU time for the same work.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from . import __version__
from .config import RIGIDITY_FLOOR


def _cmd_info(args: argparse.Namespace) -> int:
    from . import api

    summary = api.info(args.file, passthrough=args.passthrough, root=args.root)
    if args.json:
        print(json.dumps(summary, indent=2, default=str))
    else:
        print(api.format_info(summary))
    return 0


def _cmd_simulate(args: argparse.Namespace) -> int:
    from . import api

    options = ("n_particles", "box", "apix", "snr", "motion", "seed", "device", "force", "closure_deg",
               "second_domain_fraction", "occupancy", "pdb", "domain", "second_domain", "hinge")
    result = api.simulate(out_dir=args.out, progress=not args.quiet, **{name: getattr(args, name) for name in options})
    print(result.summary())
    return 0


def _cmd_mesh(args: argparse.Namespace) -> int:
    from . import api

    _, summary = api.build_mesh(
        args.map, args.out, apix=args.apix, threshold=args.threshold, volume_fraction=args.volume_fraction,
        lowpass_a=args.lowpass_a, dilate_a=args.dilate_a, cell_size_a=args.cell_size_a, rigidity_floor=args.rigidity_floor,
        rigid_labels=args.rigid_labels, no_motion_labels=args.no_motion_labels,
    )
    if args.json:
        print(json.dumps(summary, indent=2, default=str))
    else:
        print(f"mesh {summary['out']}: {summary['n_vertices']} vertices, {summary['n_cells']} cells "
              f"({summary['method']}, cell size {summary['cell_size_a']:.1f} Å); mask threshold "
              f"{summary['threshold']:.4g}, {summary['mask_fraction']:.1%} of the box"
              + (f"; {summary['n_fixed_vertices']} vertices held still" if "n_fixed_vertices" in summary else ""))
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from . import api
    from .config import TrainConfig, from_arguments

    resume = args.resume
    if resume:
        run_dir = args.out if resume is True else resume
        if not run_dir:
            raise ValueError("--resume needs the run folder: flex3d train --resume RUN (or --out RUN --resume)")
        api.train(None, run_dir, resume=True, cli_argv=sys.argv, progress=not args.quiet, overrides=_explicit(args))
        return 0
    missing = [f"--{n}" for n in ("particles", "map", "out") if not getattr(args, n)]
    if missing:
        raise ValueError("flex3d train needs " + ", ".join(missing))
    config = from_arguments(TrainConfig, args)
    api.train(config, config.out, cli_argv=sys.argv, progress=not args.quiet)
    return 0


def _explicit(args: argparse.Namespace) -> dict:
    """Settings a resumed run may change (how long and where it runs; a smaller micro-batch), when set off their defaults."""
    import dataclasses

    from .config import TrainConfig

    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    keep = ("epochs", "device", "threads", "preview_every", "checkpoint_minutes", "micro_batch")
    return {k: getattr(args, k) for k in keep if getattr(args, k) != defaults[k]}


def _cmd_generate(args: argparse.Namespace) -> int:
    from . import api

    if (args.z is None) == (args.axis is None):
        raise ValueError("flex3d generate needs exactly one of --z (a latent point) or --axis (a series)")
    if args.z is not None:
        try:
            z = [float(t) for t in args.z.replace(" ", "").split(",") if t]
        except ValueError:
            raise ValueError(f"--z must be numbers separated by commas (e.g. --z -1.5,0.3), got {args.z!r}") from None
        path = api.generate(args.run, z=z, out=args.out, box=args.box)
        print(f"wrote {path}")
    else:
        result = api.generate_series(args.run, axis=args.axis, frames=args.frames, out_dir=args.out, box=args.box,
                                     sigma_range=args.sigma_range, movie=args.movie)
        print(f"wrote {len(result['frames'])} volumes and {result['script']}" + (f" and {result['movie']}" if result.get("movie") else ""))
    return 0


def _cmd_reconstruct(args: argparse.Namespace) -> int:
    from . import api

    report = api.reconstruct(
        args.run, args.particles, args.out, run_b=args.run_b, subset=args.subset, masks=tuple(args.mask or ()),
        iterations=args.iterations, rigid=not args.no_rigid, box=args.box, chunk=args.chunk, device=args.device,
        resplit=args.resplit, randomise_from_a=args.randomise_from, resume=args.resume, passthrough=args.passthrough, root=args.root,
        max_bad_image_fraction=args.max_bad_image_fraction, resample_map=args.resample_map, progress=not args.quiet,
    )
    for mode, entry in report.get("maps", {}).items():
        parts = [f"{name} {v['fsc_0143_a']:.2f} Å" for name, v in entry.items()
                 if isinstance(v, dict) and "fsc_0143_a" in v]  # not the per-half objectives
        print(f"{mode}: FSC 0.143 " + ", ".join(parts) + f"; B = {entry['bfactor_a2']:.0f} Å²")
    if report.get("independent_half_flows"):
        print("independent half flows: half map A from --run's flow and latents, B from --run-b's")
    print(f"training box Nyquist {report.get('training_nyquist_a', float('nan')):.2f} Å; outputs in {args.out}")
    return 0


def _auto_float(text: str):
    low = text.strip().lower()
    if low in ("auto", "none"):
        return None if low == "none" else "auto"
    return float(text)


def _cmd_analyze(args: argparse.Namespace) -> int:
    from . import api

    clusters = args.clusters.strip().lower()
    if clusters != "auto":
        if not clusters.isdigit() or int(clusters) < 1:
            raise ValueError(f"--clusters must be auto or a positive number, got {args.clusters!r}")
        clusters = int(clusters)
    summary = api.analyze(args.run, out_dir=args.out, particles=args.particles, clusters=clusters,
                          compare=args.compare or (), labels=args.labels, residual_box=args.residual_box,
                          device=args.device, progress=None if args.quiet else print)
    flagged = [a["axis"] for a in summary["artefacts"] if a["flagged"]]
    print(f"{summary['clusters']['n']} clusters, {summary['outliers']['n']} outliers"
          + (f"; axes that track defocus or pose: {', '.join(flagged)}" if flagged else "; no axis tracks defocus or pose")
          + f"; {summary['timings_s']['total']:.1f} s")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from . import api

    api.demo(args.out, progress=not args.quiet, n_particles=args.n_particles, seed=args.seed)
    return 0


def _add_info(sub) -> None:
    p = sub.add_parser("info", help="describe a particle file (STAR or .cs) or an MRC map/stack")
    p.add_argument("file")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")
    p.add_argument("--passthrough", default=None, help="cryoSPARC passthrough .cs to merge by uid")
    p.add_argument("--root", default=None, help="folder to resolve relative image paths against (e.g. a moved cryoSPARC project)")
    p.set_defaults(func=_cmd_info)


def _add_simulate(sub) -> None:
    p = sub.add_parser("simulate", help="write a synthetic flexible dataset with ground truth")
    p.add_argument("--out", required=True)
    p.add_argument("--n-particles", type=int, default=5000)
    p.add_argument("--box", type=int, default=64)
    p.add_argument("--apix", type=float, default=3.0)
    p.add_argument("--snr", type=float, default=0.1)
    p.add_argument("--motion", choices=["hinge", "twist", "both", "none", "closure"], default="hinge",
                   help="closure: rigid domains turning about a hinge axis (the options below; docs/training.md)")
    p.add_argument("--closure-deg", type=float, default=40.0, help="closure: angle between the two end states")
    p.add_argument("--second-domain-fraction", type=float, default=0.3,
                   help="closure: the second domain turns by this fraction of the angle")
    p.add_argument("--occupancy", choices=["bimodal", "uniform"], default="bimodal",
                   help="closure: bimodal (45%% of the particles near each end, 10%% between) or uniform")
    p.add_argument("--pdb", default=None, help="closure: build the molecule from this PDB/mmCIF (heavy atoms, first model)")
    p.add_argument("--domain", default=None, help="closure with --pdb: the moving domain, CHAIN:FIRST-LAST[,...] e.g. A:1-120")
    p.add_argument("--second-domain", default=None, help="closure with --pdb: the second domain, same syntax")
    p.add_argument("--hinge", default=None,
                   help="closure with --pdb: two residues CHAIN:RES,CHAIN:RES; the axis runs through their CA atoms")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu",
                   help="where the consensus half maps are reconstructed: cpu (default), auto or cuda[:i]")
    p.add_argument("--force", action="store_true", help="overwrite a dataset already in --out")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_cmd_simulate)


def _add_mesh(sub) -> None:
    p = sub.add_parser("mesh", help="solvent mask and tetrahedral mesh of a consensus map (for train --mesh)")
    p.add_argument("--map", required=True, help="consensus map (MRC)")
    p.add_argument("--out", required=True, help="mesh file to write (.npz)")
    p.add_argument("--apix", type=float, default=None, help="voxel size in Å when the map's header has none")
    p.add_argument("--threshold", type=float, default=None, help="density threshold (default: automatic)")
    p.add_argument("--volume-fraction", type=float, default=None, help="or: threshold so this fraction of the box is inside")
    p.add_argument("--lowpass-a", type=float, default=10.0,
                   help="low-pass the map to this resolution in Å before thresholding (0: none)")
    p.add_argument("--dilate-a", type=float, default=6.0, help="dilate the thresholded mask by this many Å")
    p.add_argument("--cell-size-a", type=float, default=None, help="cell size in Å (default: 20 cells across the box)")
    p.add_argument("--rigidity-floor", type=float, default=RIGIDITY_FLOOR,
                   help=f"smallest rigidity weight of a cell, that of empty ones (default {RIGIDITY_FLOOR}; cryoSPARC 0.5)")
    p.add_argument("--rigid-labels", default=None, help="label volume (MRC): cells in labels > 0 are made 10x more rigid")
    p.add_argument("--no-motion-labels", default=None, help="label volume (MRC): vertices in labels > 0 do not move")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_mesh)


def _add_train(sub) -> None:
    from .config import TrainConfig, add_arguments

    p = sub.add_parser("train", help="train 3DFlex on a consensus refinement (writes a run folder)")
    add_arguments(p, TrainConfig)
    p.add_argument("--resume", nargs="?", const=True, default=False, metavar="RUN",
                   help="continue a stopped run from its last checkpoint (RUN, or the folder given by --out)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_train)


def _add_generate(sub) -> None:
    p = sub.add_parser("generate", help="convected maps at a latent point, or a series along a latent axis")
    p.add_argument("--run", required=True, help="training run folder")
    p.add_argument("--out", required=True, help="output .mrc (with --z) or folder (with --axis)")
    p.add_argument("--z", default=None, help='latent point, comma separated (a leading minus works: --z -1.5,0.3)')
    p.add_argument("--axis", type=int, default=None, help="latent axis (0-based) for a series")
    p.add_argument("--frames", type=int, default=41, help="frames of a series (odd: the middle one is the mean)")
    p.add_argument("--sigma-range", type=float, default=1.5, help="a series spans +-this many standard deviations")
    p.add_argument("--box", type=int, default=None, help="output box (Fourier-resized; default: the training box)")
    p.add_argument("--movie", action="store_true", help="also write an mp4 of the series")
    p.set_defaults(func=_cmd_generate)


def _add_reconstruct(sub) -> None:
    p = sub.add_parser("reconstruct", help="motion-corrected half maps with a same-solver rigid baseline")
    p.add_argument("--run", required=True, help="training run folder (with --run-b: the run trained with --half-set A)")
    p.add_argument("--run-b", default=None, metavar="RUN_B",
                   help="independent half flows (an honest FSC): the run trained with --half-set B; half map A is "
                        "solved with --run's flow and latents, B with these")
    p.add_argument("--particles", required=True, help="full-resolution particles (STAR or .cs), same rows as for training "
                   "(with --run-b: the full set both half runs were taken from)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--subset", default=None, metavar="FILE",
                   help="use only the particles this STAR or .cs file lists (a cluster's or a selection's export), "
                        "matched to --particles by image name in any order; they keep --particles' half sets")
    p.add_argument("--mask", action="append", help="mask (MRC) for a local FSC; repeat for several")
    p.add_argument("--iterations", type=int, default=20, help="L-BFGS iterations per half map")
    p.add_argument("--no-rigid", action="store_true", help="skip the rigid baseline")
    p.add_argument("--box", type=int, default=None, help="reconstruction box (default: the particles' box)")
    p.add_argument("--chunk", type=int, default=256, help="particles per streamed chunk")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:i]")
    p.add_argument("--resplit", action="store_true", help="ignore the input's half sets and split at random (seeded)")
    p.add_argument("--randomise-from", type=_auto_float, default="auto", metavar="A",
                   help="noise substitution for masked FSCs: phase-randomise beyond this resolution in Å "
                        "(auto: where the unmasked FSC falls below 0.8; none: off)")
    p.add_argument("--resume", action="store_true", help="continue from the saved solver states in --out")
    p.add_argument("--max-bad-image-fraction", type=float, default=0.05, metavar="F",
                   help="images with NaN/Inf or all-equal pixels are left out (counted in report.json); more than this "
                        "fraction of them refuses the input (default 0.05)")
    p.add_argument("--resample-map", action="store_true",
                   help="resample --mask volumes of another box or pixel size onto the half maps' grid (else refused)")
    p.add_argument("--passthrough", default=None)
    p.add_argument("--root", default=None)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_cmd_reconstruct)


def _add_analyze(sub) -> None:
    p = sub.add_parser("analyze", help="read a trained run: artefacts, clusters, outliers, comparisons, what moved")
    p.add_argument("run", help="training run folder")
    p.add_argument("--particles", default=None, help="the run's particles (STAR or .cs; default the file it trained on)")
    p.add_argument("--out", default=None, help="output folder (default RUN/analysis)")
    p.add_argument("--clusters", default="auto", help="auto (a Gaussian mixture, the BIC picks 1-8) or a number (k-means)")
    p.add_argument("--compare", action="append", metavar="FILE[::SPEC]",
                   help="other tools' latents matched by image name: cryoDRGN z.pkl[::PARTICLES.star], cryoSPARC "
                        "3DVA .cs, a STAR file[::COLUMN_PREFIX]; repeat for several")
    p.add_argument("--labels", default=None, help="label volume (MRC, consensus map grid): displacement per painted region")
    p.add_argument("--residual-box", type=int, default=None,
                   help="box of the per-particle residual (default the latent box, else the training box up to 64)")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:i]")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_cmd_analyze)


def _add_demo(sub) -> None:
    p = sub.add_parser("demo", help="the whole path on the built-in synthetic dataset")
    p.add_argument("--out", default="flex3d-demo", help="output folder (default: flex3d-demo)")
    p.add_argument("--n-particles", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_cmd_demo)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="flex3d", description="3D Flexible Refinement for cryo-EM.")
    parser.add_argument("--version", action="version", version=f"napari-flex3d {__version__}")
    parser.add_argument("--debug", action="store_true",
                        help="on an error, print the traceback as well as the one-line message (anywhere on the line)")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_info(sub)
    _add_simulate(sub)
    _add_mesh(sub)
    _add_train(sub)
    _add_generate(sub)
    _add_reconstruct(sub)
    _add_analyze(sub)
    _add_demo(sub)
    return parser


_NEGATIVE_OK = ("--z",)  # options whose value may start with a minus sign


def _join_negative_values(argv: list[str]) -> list[str]:
    """``--z -1.5,0.3`` as ``--z=-1.5,0.3``: argparse would read a leading minus as an option."""
    out: list[str] = []
    it = iter(argv)
    for token in it:
        if token in _NEGATIVE_OK:
            value = next(it, None)
            if value is not None and value.startswith("-") and not value.startswith("--"):
                token = f"{token}={value}"
            elif value is not None:
                out.append(token)
                token = value
        out.append(token)
    return out


#: Exit codes: 2 for anything the user can fix, input or system (a bad option, a malformed or
#: mismatched file, a missing or unwritable path, a full disk: argparse's own code for usage
#: errors, so scripts test one number), 3 for an internal error (a bug: please report it), 130
#: for Ctrl-C.
EXIT_USER, EXIT_INTERNAL = 2, 3


def _os_message(exc: OSError, out=None) -> str:
    """One line for an ``OSError``: the file(s) it names and why, with a hint for the common cases.

    A failed ``write`` carries no file name; a full disk or a file-size limit is then put on
    the command's output, ``out`` (its ``--out``), which is where everything is written.
    """
    import errno

    space = exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
    if exc.filename is not None:
        names = str(exc.filename) + (f" -> {exc.filename2}" if exc.filename2 else "")
    elif space and out:
        names = f"writing {out}"
    else:
        return str(exc)
    reason = exc.strerror or str(exc)
    hint = {
        errno.ENOSPC: "the disk is full; free space or choose another --out",
        errno.EDQUOT: "the disk quota is exceeded; free space or choose another --out",
        errno.EFBIG: "the file is larger than this system allows",
        errno.ENOTDIR: "a part of this path is a file, not a folder",
        errno.EISDIR: "a folder is in the way where a file is expected",
        errno.EEXIST: "a file is in the way where a folder is expected",
        errno.EACCES: "check the permissions of this path",
        errno.EROFS: "the file system is read-only",
    }.get(exc.errno)
    return f"{names}: {reason}" + (f" ({hint})" if hint else "")


def one_line_warning(command: str):
    """A ``warnings.formatwarning`` printing ``flex3d COMMAND: warning: MESSAGE`` on one line (a
    warning is news for the user, such as images left out; not the source line that raised it)."""

    def format_warning(message, category, filename, lineno, line=None) -> str:
        return f"flex3d {command}: warning: " + " ".join(str(message).split()) + "\n"

    return format_warning


def main(argv: list[str] | None = None) -> int:
    """Run one ``flex3d`` command; errors become one line on stderr (``--debug``: with the traceback)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = _join_negative_values([a for a in argv if a != "--debug"])
    args = build_parser().parse_args(argv)
    import warnings

    from ._process import keep_freed_memory

    keep_freed_memory()  # the solver's and the residual's chunk temporaries are reused, not page-faulted in again

    python_format, warnings.formatwarning = warnings.formatwarning, one_line_warning(args.command)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print(f"flex3d {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - the one place that turns any failure into a message
        if debug:
            import traceback

            traceback.print_exc()
        if isinstance(exc, OSError):
            code, text = EXIT_USER, _os_message(exc, getattr(args, "out", None))
        elif isinstance(exc, ValueError):
            code, text = EXIT_USER, str(exc)
        else:
            code, text = EXIT_INTERNAL, f"internal error ({type(exc).__name__}: {exc})"
            if not debug:
                text += "; rerun with --debug for the traceback and report it"
        print(f"flex3d {args.command}: error: " + " ".join(text.split()), file=sys.stderr)
        return code
    finally:
        warnings.formatwarning = python_format


if __name__ == "__main__":
    sys.exit(main())
