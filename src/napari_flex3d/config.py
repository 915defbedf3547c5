"""Settings of training and of latent-space generation, as frozen dataclasses saved with each run.

Every field carries a help string in ``dataclasses.field(metadata={"help": ...})``; the
command line (:func:`add_arguments`, :func:`from_arguments`, and back: :func:`to_arguments`)
and the magicgui forms are built from these classes, so a setting is declared once. ``to_dict``/``from_dict`` give a
JSON round trip; :func:`provenance` adds the version, time and command line that every
run writes next to its settings (``config.json``).

Layer L0: imports nothing of the package; every other room may import it.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "RIGIDITY_FLOOR",
    "RIGIDITY_REFERENCE_VOLUME_A3",
    "RIGIDITY_LADDER",
    "RIGIDITY_WARMUP_FRACTION",
    "RIGIDITY_CHOICE_MIN_Z",
    "MINIBATCHES_PER_EPOCH",
    "BATCH_MIN",
    "BATCH_MAX",
    "TrainConfig",
    "GenerateConfig",
    "to_dict",
    "from_dict",
    "provenance",
    "config_document",
    "read_config_json",
    "add_arguments",
    "from_arguments",
    "to_arguments",
    "command_line",
    "check_box",
    "check_number",
    "option_name",
]

#: Rigidity weight of an empty mesh cell (cells are weighted by their density, the densest 1,
#: floored here). cryoSPARC uses 0.5; at 0.5 the solvent around a domain that moves by more
#: than about a cell holds the motion back (about 30 % on the 20,000-particle benchmark), and
#: 0.1 gave better latents and a lower validation loss on both benchmark data sets, though not on
#: a 2,000-particle, 4-epoch case (benchmarks/RESULTS.md, "Findings: recovery").
RIGIDITY_FLOOR = 0.1

#: Volume (Å³) of the reference cell of the rigidity prior's ``volume`` scale: each cell's strain
#: counts ``its volume / this`` times, so a weight means one stiffness per unit of density volume
#: on any mesh, box or pixel size. It is the mean cell of cryoSPARC's default mesh (20 cells
#: across) on a typical training box (128 px at 2.5 Å: 16 Å cells; tetgen's cells average 0.38 of
#: the largest it allows, measured), so there the weight means what the paper's per-cell sum means.
RIGIDITY_REFERENCE_VOLUME_A3 = 180.0

#: ``TrainConfig.rigidity_choice="validation"``: the weights tried after the warm-up, as
#: fractions of ``rigidity_lambda``, and the fraction the warm-up trains at: the ladder's top (a
#: warm-up at its geometric middle let a small hinge's flow warp the frame, and keeping the top
#: weight after it lost the hinge's order, |Spearman| 0.77 against 0.94: RESULTS, rigidity choice).
RIGIDITY_LADDER = (1.0, 1.0 / 4, 1.0 / 16, 1.0 / 64)
RIGIDITY_WARMUP_FRACTION = 1.0
#: ... and how many standard errors of the paired mean difference of the held-out particles' losses
#: at the final band make a weaker weight's trial clearly worse than the best one there.
RIGIDITY_CHOICE_MIN_Z = 3.0

#: ``TrainConfig.batch=None`` (the default): a new run's minibatch is the training particles over
#: this many, rounded down to a multiple of 8 and kept within ``BATCH_MIN``..``BATCH_MAX``. The flow
#: and map are updated once a minibatch, so a fixed 256 gave 2,000 particles 8 updates an epoch and
#: the flow stopped at 0.44 of a closure's excursion; 34 an epoch (56 each) reached 0.87 (RESULTS, closure).
#: From 8,192 training particles on it is the fixed 256 of earlier runs (theirs is saved with them).
MINIBATCHES_PER_EPOCH = 32
BATCH_MIN, BATCH_MAX = 32, 256


def _f(default, help: str, **meta):
    """A dataclass field with its help text (and optional ``choices``) in the metadata."""
    return field(default=default, metadata={"help": help, **meta})


def option_name(name: str) -> str:
    """The command-line spelling of a setting: ``latent_dim`` -> ``--latent-dim``."""
    return "--" + name.replace("_", "-")


def check_number(name: str, value, *, low=None, high=None, low_open=False, integer=False, optional=False):
    """Raise ``ValueError`` naming ``--name`` unless ``value`` is a finite number in the range.

    ``low``/``high`` bound it (inclusive; ``low_open``: ``value > low``); ``optional``: None
    passes. The one check behind every numeric option of the CLI, the widgets and the API.
    """
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not float(value).is_integer()):
        raise ValueError(f"{option_name(name)} must be {'an integer' if integer else 'a number'}, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{option_name(name)} must be finite, got {value}")
    if low is not None and (value <= low if low_open else value < low):
        raise ValueError(f"{option_name(name)} must be {'>' if low_open else '>='} {low:g}, got {value:g}")
    if high is not None and value > high:
        raise ValueError(f"{option_name(name)} must be <= {high:g}, got {value:g}")


#: The smallest box anything in napari-flex3d works at (the training box floor; smaller maps
#: hold too few Fourier shells for a band ramp or an FSC).
MIN_BOX = 16


def check_box(name: str, box, *, optional=True, low: int = MIN_BOX):
    """A box in voxels: an even integer >= ``low`` (None passes when ``optional``)."""
    check_number(name, box, low=low, integer=True, optional=optional)
    if box is not None and int(box) % 2:
        raise ValueError(f"{option_name(name)} must be even (Fourier cropping keeps the centre voxel), got {box}")


class _Settings:
    """``config.to_dict()`` and ``Config.from_dict(d)`` as methods too (same as the module functions).

    ``__post_init__`` runs ``validate()``, so a settings object out of range cannot be built:
    the CLI, the widgets' forms and ``from_dict`` all meet the same messages.
    """

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:  # pragma: no cover - each class overrides it
        pass

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    @classmethod
    def from_dict(cls, data: dict):
        return from_dict(cls, data)


@dataclass(frozen=True)
class TrainConfig(_Settings):
    """Training of the flow generator, canonical map and per-particle latents (docs/model.md, docs/training.md).

    The defaults are cryoSPARC's 3DFlex defaults where it has one (K=2, 6 layers of 64
    units, rigidity 2.0, latent noise 0.15, about 16 epochs).
    """

    # inputs and outputs
    particles: str = _f("", "particle file (RELION STAR or cryoSPARC .cs) with poses and CTF")
    map: str = _f("", "consensus map (MRC) that initialises the canonical map and the mesh")
    out: str = _f("", "run folder to write (config.json, checkpoints/, latents.npy, ...)")
    mesh: str | None = _f(None, "a saved mesh to use (None: build one from --map with the mesh settings)")
    passthrough: str | None = _f(None, "cryoSPARC passthrough .cs merged by uid")
    root: str | None = _f(None, "folder to resolve relative image paths against")
    # model
    latent_dim: int = _f(2, "number of latent dimensions K")
    hidden: int = _f(64, "hidden units per layer of the flow generator")
    layers: int = _f(6, "hidden layers of the flow generator")
    rigidity_lambda: float = _f(
        2.0,
        "weight of the local rigidity penalty (lambda_rigid); with --rigidity-choice validation the largest of the "
        "weights tried",
    )
    rigidity_choice: str = _f(
        "validation",
        "validation: after the warm-up (at --rigidity-lambda), short trials of --rigidity-lambda x 1, 1/4, 1/16, 1/64 "
        "from the same start, the strongest first, each compared particle by particle on the held-out set at the "
        "final band (latents from the trial's band); the ladder stops at a weight worse there than the best by more "
        f"than {RIGIDITY_CHOICE_MIN_Z:g} standard errors, and of the rest the lowest validation loss at the trial's "
        "band is kept (rigidity_choice.json); fixed: --rigidity-lambda throughout",
        choices=("validation", "fixed"),
    )
    rigidity_scale: str = _f(
        "cell",
        "cell: the paper's plain sum over cells (a weight's strength then depends on the mesh's cell size); volume "
        "(experimental): each cell's strain weighted by its volume over a 180 Å^3 reference cell, so a weight means "
        "the same on any mesh or box",
        choices=("volume", "cell"),
    )
    kernel: str = _f("cubic", "convection interpolation kernel", choices=("cubic", "linear"))
    flow_init_a: float = _f(
        0.0,
        "RMS vertex displacement (Å) between z=-1 and z=+1 of the fresh flow generator (smooth random fields); "
        "0 keeps the near-zero start. About 1 Å lets latent inference tell zero initial latents apart",
    )
    # mask and mesh (used when no --mesh is given)
    mask_threshold: float | None = _f(None, "density threshold of the solvent mask (None: automatic)")
    mask_dilate_a: float = _f(6.0, "dilation of the mask in Å before meshing")
    mesh_cell_size_a: float | None = _f(
        None, "mesh cell size in Å (None: 20 cells across the box, cryoSPARC's default, but at least 4 voxels)"
    )
    rigidity_path: bool = _f(
        False, "evaluate half the rigidity prior at latents between random pairs of the minibatch's particles "
        "(the states between crowded end states held locally rigid too; off: at the particles' latents only)")
    rigidity_floor: float = _f(
        RIGIDITY_FLOOR, "smallest rigidity weight of a mesh cell (the weight of empty cells; cryoSPARC uses 0.5)"
    )
    # data
    box: int | None = _f(None, "training box N_L in pixels, Fourier-cropped from the particles (None: min(box, 128))")
    latent_box: int | None = _f(
        None,
        "box of latent inference, Fourier-cropped from the training box (None: the training box). Inference "
        "projects each particle about 100 times per minibatch against 3 for the model update, so a smaller box "
        "here makes a larger training box affordable; inference is cut at band_end of this box's Nyquist",
    )
    val_fraction: float = _f(0.05, "fraction of particles held out for the validation loss")
    # optimisation
    epochs: int = _f(16, "passes over the training particles")
    batch: int | None = _f(
        None,
        f"particles per minibatch (None: the training particles over {MINIBATCHES_PER_EPOCH}, a multiple of 8 between "
        f"{BATCH_MIN} and {BATCH_MAX}, so that an epoch makes at least {MINIBATCHES_PER_EPOCH} updates from "
        f"{BATCH_MIN * MINIBATCHES_PER_EPOCH} training particles on; the paper uses >= 500 on real data)",
    )
    micro_batch: int | None = _f(
        None,
        "particles per micro-batch: each minibatch is worked through in pieces of this size, its gradient accumulated "
        "(the same result in less GPU memory; None: the whole minibatch). Halved by itself when CUDA runs out of memory",
    )
    lr_flow: float = _f(3e-3, "Adam learning rate of the flow generator")
    lr_canonical: float = _f(1e-2, "Adam learning rate of the canonical map, relative to its RMS density")
    warmup_epochs: int = _f(2, "epochs training the flow and map with the latents held at their initial values")
    flow_batches: int = _f(1, "minibatches per cycle updating the flow generator (latents inferred, map fixed)")
    structure_batches: int = _f(1, "minibatches per cycle updating the canonical map (flow fixed)")
    band_start: float = _f(0.25, "starting band limit as a fraction of the training box's Nyquist")
    band_end: float = _f(0.8, "final band limit as a fraction of the training box's Nyquist")
    lr_final: float = _f(
        0.1,
        "after the band ramp, both learning rates fall along a half cosine to this fraction of their start by "
        "the last step (1: constant)",
    )
    band_ramp_epochs: float | None = _f(None, "epochs over which the band limit rises (None: two thirds of --epochs)")
    # latents
    latent_init: str = _f(
        "variability",
        "initial latents: variability (principal directions of the residuals, a 3DVA-like start), zero, random, "
        "column (numbered STAR columns of the input, see --latent-column), or a file (.npy, cryoDRGN z.pkl, cryoSPARC .cs)",
    )
    latent_init_band: float = _f(0.8, "band limit (fraction of Nyquist) of the variability start")
    latent_column: str | None = _f(
        None, "STAR column prefix (rlnFlex3dLatent) or .cs field prefix (components_mode_) for --latent-init"
    )
    latent_inference: str = _f(
        "grid", "latent inference per minibatch with the model frozen", choices=("grid", "gradient", "none")
    )
    latent_steps: int = _f(2, "coordinate-descent sweeps (grid) or gradient steps (gradient) per minibatch")
    latent_grid: int = _f(9, "candidate values per latent axis in a coordinate-descent sweep")
    latent_range: float = _f(2.5, "coordinate descent searches z_k in +-latent_range (prior standard deviations)")
    latent_estimate: str = _f(
        "mean",
        "what a grid inference keeps per particle: the posterior mean over the joint grid (mean) or the best point "
        "(map); the mean needs the joint first sweep (latent_grid ** K <= 100), else the best point is kept",
        choices=("mean", "map"),
    )
    latent_window: int | None = _f(
        None,
        "a warm start for grid inference once the latents have had an epoch of it: the joint first sweep tries only "
        "the window**K grid points around each particle's latent, not all latent_grid**K (None: the whole grid). "
        "Cheaper, and the same where a particle's posterior lies inside the window; broad posteriors lose the mass outside",
    )
    lr_latent: float = _f(0.1, "step size of gradient latent inference (Adam)")
    latent_noise: float = _f(0.15, "standard deviation of the noise injected into the latents during the model update")
    latent_prior: float = _f(
        1.0, "weight of the unit Gaussian prior on the latents (the learned prior starts from it and keeps its moments)"
    )
    latent_prior_shape: str = _f(
        "empirical",
        "the latents' prior in grid inference: empirical (learned from the particles' posteriors on the joint grid, "
        "starting from the Gaussian and updated every epoch; needs the joint first sweep, else the Gaussian is kept) "
        "or gaussian (the unit Gaussian throughout, as cryoSPARC)",
        choices=("empirical", "gaussian"),
    )
    # run
    device: str = _f("auto", "auto, cpu, or cuda[:i]")
    seed: int = _f(0, "random seed (runs are deterministic on the CPU given the seed)")
    threads: int | None = _f(None, "CPU threads for torch (None: torch's default)")
    preview_every: int = _f(1, "epochs between preview volumes at -1/+1 sigma along each latent axis (0: never)")
    checkpoint_minutes: float = _f(
        10.0,
        "minutes between checkpoints written in the middle of an epoch, besides the one at each epoch's end "
        "(a killed run resumes from the last with --resume, losing at most this much; 0: at epoch ends only)",
    )
    max_particles: int | None = _f(None, "use only the first N particles (for quick trials)")
    max_bad_image_fraction: float = _f(
        0.05,
        "images with NaN or infinite pixels or all pixels equal are left out (counted and named in train.log); "
        "more than this fraction of them refuses the input, as the stacks themselves are then likely wrong",
    )
    resample_map: bool = _f(
        False,
        "resample the consensus map to the particles' pixel size and box (Fourier crop/pad) when they differ; "
        "without it a mismatch is refused",
    )
    half_set: str = _f(
        "",
        "train on one half set of the input's split only (A: rlnRandomSubset 1 / cryoSPARC split 0, B: the other), "
        "for independent flows per half map (flex3d reconstruct --run A --run-b B: an honest half-map FSC); "
        "empty: all particles",
        choices=("", "A", "B"),
    )

    def rigidity_weight(self) -> float:
        """The rigidity weight a training step uses: ``rigidity_lambda``, or while a choice by
        validation is still to come (the warm-up), its ``RIGIDITY_WARMUP_FRACTION``."""
        if self.rigidity_choice == "validation":
            return self.rigidity_lambda * RIGIDITY_WARMUP_FRACTION
        return self.rigidity_lambda

    def minibatch(self, n_train: int) -> int:
        """Particles per minibatch for ``n_train`` training particles: ``batch``, or for ``None``
        ``n_train / MINIBATCHES_PER_EPOCH`` rounded down to a multiple of 8, within ``BATCH_MIN``..``BATCH_MAX``."""
        if self.batch is not None:
            return self.batch
        return min(BATCH_MAX, max(BATCH_MIN, 8 * (n_train // (8 * MINIBATCHES_PER_EPOCH))))

    def validate(self) -> None:
        """Raise ``ValueError`` naming the option (``--batch must be >= 1, got 0``) for a value out of range."""
        ints_at_least = {"latent_dim": 1, "hidden": 1, "layers": 1, "epochs": 1, "warmup_epochs": 0,
                         "flow_batches": 1, "structure_batches": 1, "latent_steps": 0, "latent_grid": 2, "seed": 0,
                         "preview_every": 0}
        for name, low in ints_at_least.items():
            check_number(name, getattr(self, name), low=low, integer=True)
        for name in ("batch", "threads", "max_particles", "micro_batch"):
            check_number(name, getattr(self, name), low=1, integer=True, optional=True)
        check_number("latent_window", self.latent_window, low=2, integer=True, optional=True)
        for name in ("rigidity_lambda", "flow_init_a", "mask_dilate_a", "latent_noise", "latent_prior"):
            check_number(name, getattr(self, name), low=0)
        for name in ("lr_flow", "lr_canonical", "lr_latent", "latent_range"):
            check_number(name, getattr(self, name), low=0, low_open=True)
        # lr_final, val_fraction, box and latent_box are checked where the run starts (training.schedule, training.setup),
        # against the particles' box that a settings object does not know.
        for name in ("band_start", "band_end", "latent_init_band"):
            check_number(name, getattr(self, name), low=0, high=1, low_open=True)
        check_number("rigidity_floor", self.rigidity_floor, low=0, high=1)
        check_number("max_bad_image_fraction", self.max_bad_image_fraction, low=0, high=1)
        check_number("mask_threshold", self.mask_threshold, optional=True)
        check_number("mesh_cell_size_a", self.mesh_cell_size_a, low=0, low_open=True, optional=True)
        if self.band_start > self.band_end:
            raise ValueError(f"--band-start {self.band_start:g} must be <= --band-end {self.band_end:g}")
        check_number("band_ramp_epochs", self.band_ramp_epochs, low=0, optional=True)
        if self.band_ramp_epochs is not None and self.band_ramp_epochs > self.epochs:
            raise ValueError(f"--band-ramp-epochs {self.band_ramp_epochs:g} must be <= --epochs {self.epochs}")
        _check_choices(self)



@dataclass(frozen=True)
class GenerateConfig(_Settings):
    """Convected volumes at latent points and series along a latent axis."""

    run: str = _f("", "training run folder")
    out: str = _f("", "output MRC (one point) or folder (series)")
    z: tuple[float, ...] | None = _f(None, "latent point, comma separated")
    axis: int | None = _f(None, "latent axis for a series (0-based)")
    frames: int = _f(41, "frames in a series (odd: the middle frame is the mean)")
    sigma_range: float = _f(1.5, "a series runs from -range to +range standard deviations of the learned latents")
    box: int | None = _f(None, "output box (None: the training box)")

    def validate(self) -> None:
        """Raise ``ValueError`` naming the option for a value out of range (``--z`` must be finite)."""
        if self.z is not None:
            if len(self.z) == 0:
                raise ValueError("--z needs at least one number (a latent point, comma separated)")
            for v in self.z:
                if not math.isfinite(v):
                    raise ValueError(f"--z must be finite numbers, got {','.join(f'{x:g}' for x in self.z)}")
        check_number("axis", self.axis, low=0, integer=True, optional=True)
        check_number("frames", self.frames, low=2, integer=True)
        check_number("sigma_range", self.sigma_range, low=0, low_open=True)
        check_box("box", self.box, low=8)  # an output box only: smaller than training's floor is fine


# --------------------------------------------------------------------------- JSON round trip


def to_dict(config) -> dict[str, Any]:
    """A JSON-able dict of every field of a config dataclass (tuples become lists)."""
    out = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        out[f.name] = list(value) if isinstance(value, tuple) else value
    return out


def _allowed_types(annotation) -> tuple:
    """The plain types an annotation such as ``int | None`` admits."""
    hint = annotation
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return tuple(t for t in typing.get_args(hint))
    return (hint,)


def _coerce(cls, name: str, value, hint):
    allowed = _allowed_types(hint)
    if value is None:
        if type(None) in allowed:
            return None
        raise ValueError(f"{cls.__name__}.{name} may not be None")
    for t in allowed:
        if t is type(None):
            continue
        base = typing.get_origin(t) or t
        if base is tuple and isinstance(value, (list, tuple)):
            if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
                raise ValueError(f"{cls.__name__}.{name}: {value!r} is not a list of numbers")
            return tuple(float(v) for v in value)
        if base is bool and isinstance(value, bool):
            return value
        if base is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if base is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if base is str and isinstance(value, str):
            return value
    raise ValueError(f"{cls.__name__}.{name}: {value!r} is not a {hint}")


#: Settings added after runs had been saved without them, with the value that reproduces those
#: runs: :func:`from_dict` fills them in where a saved settings mapping lacks them.
_BEFORE_THEY_EXISTED = {"TrainConfig": {"rigidity_choice": "fixed", "rigidity_scale": "cell"}}


def from_dict(cls, data: dict):
    """Build ``cls`` from :func:`to_dict`'s output; unknown keys and wrong types raise ``ValueError``.

    A setting newer than the saved mapping takes the value runs had before it existed (a run
    saved before ``rigidity_scale`` keeps the plain per-cell sum it was trained with)."""
    if not isinstance(data, dict):
        raise ValueError(f"{cls.__name__} settings must be a mapping, got {type(data).__name__}")
    data = {**_BEFORE_THEY_EXISTED.get(cls.__name__, {}), **data}
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} setting(s): {', '.join(unknown)}")
    hints = typing.get_type_hints(cls)
    kwargs = {k: _coerce(cls, k, v, hints[k]) for k, v in data.items()}
    return cls(**kwargs)  # validated by __post_init__


def _check_choices(config) -> None:
    for f in dataclasses.fields(config):
        choices = f.metadata.get("choices")
        if choices and getattr(config, f.name) not in choices:
            raise ValueError(f"{type(config).__name__}.{f.name}: {getattr(config, f.name)!r} is not one of {choices}")


def provenance(cli_argv: list[str] | None = None) -> dict[str, Any]:
    """Version, time (UTC, ISO 8601), command line and Python/torch versions of this run."""
    from . import __version__

    try:
        import torch

        torch_version = torch.__version__
    except ImportError:  # pragma: no cover
        torch_version = None
    return {
        "version": __version__,
        "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command_line": list(cli_argv) if cli_argv is not None else list(sys.argv),
        "python": sys.version.split()[0],
        "torch": torch_version,
    }


def config_document(config, cli_argv: list[str] | None = None, **extra) -> dict[str, Any]:
    """``{"kind": ..., "settings": ..., "provenance": ..., **extra}``: what a ``config.json`` holds.

    Written by ``io.atomic.write_config_json`` (this layer writes no files).
    """
    return {"kind": type(config).__name__, "settings": to_dict(config), "provenance": provenance(cli_argv), **extra}


def read_config_json(path, cls=None):
    """Read a ``config.json`` (``io.atomic.write_config_json``) back into its dataclass."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
        kind, settings = doc["kind"], doc["settings"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{path}: not a napari-flex3d config.json ({exc})") from exc
    if not isinstance(kind, str) or not isinstance(settings, dict):
        raise ValueError(f"{path}: not a napari-flex3d config.json (kind {kind!r}, settings of type "
                         f"{type(settings).__name__})")
    classes = {c.__name__: c for c in (TrainConfig, GenerateConfig)}
    if cls is None:
        if kind not in classes:
            raise ValueError(f"{path}: unknown config kind {kind!r}")
        cls = classes[kind]
    elif kind != cls.__name__:
        raise ValueError(f"{path}: holds a {kind}, not a {cls.__name__}")
    try:
        return from_dict(cls, settings)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from exc


# --------------------------------------------------------------------------- command line


def _parse_bool(text: str) -> bool:
    low = text.lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"not a boolean: {text!r}")


def _parse_optional(parse):
    def inner(text: str):
        return None if text.lower() in ("none", "auto", "") else parse(text)

    return inner


def _parse_floats(text: str) -> tuple[float, ...]:
    return tuple(float(t) for t in text.replace(" ", "").split(",") if t)


def add_arguments(parser: argparse.ArgumentParser, cls, exclude: tuple[str, ...] = (), required: tuple[str, ...] = ()):
    """Add one ``--option`` per field of ``cls`` (``latent_dim`` -> ``--latent-dim``), help and default from the field."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in exclude:
            continue
        allowed = [t for t in _allowed_types(hints[f.name]) if t is not type(None)]
        optional = len(allowed) < len(_allowed_types(hints[f.name]))
        base = typing.get_origin(allowed[0]) or allowed[0]
        parse = {int: int, float: float, str: str, bool: _parse_bool, tuple: _parse_floats}[base]
        if optional:
            parse = _parse_optional(parse)
        help_text = f.metadata.get("help", "")
        if f.name not in required:
            help_text += f" (default: {f.default})"
        parser.add_argument(
            "--" + f.name.replace("_", "-"),
            dest=f.name,
            type=parse,
            default=f.default,
            choices=f.metadata.get("choices"),
            required=f.name in required,
            help=help_text,
        )
    return parser


def from_arguments(cls, args: argparse.Namespace, **overrides):
    """Build ``cls`` from a namespace filled by :func:`add_arguments` (missing names keep their defaults)."""
    names = {f.name for f in dataclasses.fields(cls)}
    values = {k: v for k, v in vars(args).items() if k in names}
    values.update(overrides)
    return cls(**values)  # validated by __post_init__


def _format_value(value) -> str:
    """``value`` as the text its option's parser (:func:`add_arguments`) reads back to the same value."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)  # the shortest text that reads back to the same float
    if isinstance(value, (tuple, list)):
        return ",".join(repr(float(v)) for v in value)
    return str(value)


def to_arguments(config) -> list[str]:
    """The options that :func:`add_arguments` and :func:`from_arguments` read back as ``config``:
    ``["--latent-dim=2", ...]``, one per setting that differs from its default (``--name=value``,
    so a value with a leading minus is not taken for an option)."""
    out = []
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        if value != default:
            out.append(f"{option_name(f.name)}={_format_value(value)}")
    return out


def command_line(job: str, *positional, **options) -> list[str]:
    """``["flex3d", job, *positional, "--an-option=value", "--a-flag", ...]`` from Python names:
    ``None`` and ``False`` are left out, ``True`` is a bare flag, a list repeats its option."""
    argv = ["flex3d", job, *(str(p) for p in positional)]
    for name, value in options.items():
        if value is None or value is False:
            continue
        if value is True:
            argv.append(option_name(name))
        else:
            for v in value if isinstance(value, (list, tuple)) else (value,):
                argv.append(f"{option_name(name)}={_format_value(v)}")
    return argv
