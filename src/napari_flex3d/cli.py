"""The ``flex3d`` command line: each sub-command is a few lines over :mod:`napari_flex3d.api`."""

from __future__ import annotations

import argparse
import json
import sys

from . import __version__


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

    result = api.simulate(
        out_dir=args.out,
        n_particles=args.n_particles,
        box=args.box,
        apix=args.apix,
        snr=args.snr,
        motion=args.motion,
        seed=args.seed,
        progress=not args.quiet,
    )
    print(result.summary())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="flex3d", description="3D Flexible Refinement for cryo-EM.")
    parser.add_argument("--version", action="version", version=f"napari-flex3d {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("info", help="describe a particle file (STAR or .cs) or an MRC map/stack")
    p.add_argument("file")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")
    p.add_argument("--passthrough", default=None, help="cryoSPARC passthrough .cs to merge by uid")
    p.add_argument("--root", default=None, help="folder to resolve relative image paths against (e.g. a moved cryoSPARC project)")
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser("simulate", help="write a synthetic flexible dataset with ground truth")
    p.add_argument("--out", required=True)
    p.add_argument("--n-particles", type=int, default=5000)
    p.add_argument("--box", type=int, default=64)
    p.add_argument("--apix", type=float, default=3.0)
    p.add_argument("--snr", type=float, default=0.1)
    p.add_argument("--motion", choices=["hinge", "twist", "both"], default="hinge")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_cmd_simulate)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError) as exc:
        print(f"flex3d {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
