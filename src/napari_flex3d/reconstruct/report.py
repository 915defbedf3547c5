"""FSC and report of solved half maps: global and masked FSC curves, the noise-substitution
check of each mask, the FSC-weighted sharpened maps, and the files ``fsc.csv``, ``fsc.png``
and ``report.json`` (docs/validation.md).

A room of ``reconstruct``; it may import ``io``, ``ops`` and :mod:`.validation`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..io.atomic import atomic_path, write_json, write_text
from ..io.mrc import write_map
from ..ops.fsc import fsc_resolution, shell_frequencies_inv_a
from .validation import informative_range, masked_fsc, sharpen

__all__ = ["MapValidation", "auto_randomise_from_a", "validate_half_maps", "write_sharpened_maps", "write_fsc_files"]


@dataclass
class MapValidation:
    """Per mode (``"flex"``, ``"rigid"``): the report entry and the sharpened map ``(N, N, N)``
    with its MRC label; and the FSC curves for ``fsc.csv`` (``columns``) and ``fsc.png`` (``curves``)."""

    freqs_inv_a: np.ndarray
    entries: dict = field(default_factory=dict)
    sharpened: dict = field(default_factory=dict)
    columns: dict = field(default_factory=dict)
    curves: dict = field(default_factory=dict)


def auto_randomise_from_a(maps: dict, modes: list, box: int, apix: float) -> float | None:
    """RELION's choice of where to phase-randomise: where the unmasked FSC falls below 0.8.

    The coarsest over the modes, so that the flex and rigid masked curves are corrected from the
    same shell on and compare fairly; ``None`` when that is at Nyquist or never."""
    at_08 = [fsc_resolution(masked_fsc(maps[(m, "A")], maps[(m, "B")], apix).curve, box, apix, 0.8) for m in modes]
    randomise = max(at_08)
    return None if not np.isfinite(randomise) or randomise <= 2 * apix else randomise


def _mask_entry(result, name: str, randomise, freqs: np.ndarray, box: int, apix: float) -> dict:
    """The report entry of one masked FSC, with the mask's informative range when it was corrected."""
    entry = {"fsc_0143_a": result.resolution_0143_a, "fsc_05_a": result.resolution_05_a,
             "corrected": result.corrected, "randomised_from_a": randomise if result.corrected else None}
    if result.randomised is None:
        return entry
    past = np.arange(freqs.size) >= result.from_shell  # mask-induced correlation past the randomisation
    induced = float(np.max(result.randomised[past])) if past.any() else 0.0
    entry["mask_induced_fsc_max"] = induced
    info = informative_range(result, box, apix)
    entry.update(info)
    if not info["fsc_0143_informative"]:
        entry["warning"] = (
            f"mask {name!r} is too tight or small for these maps: phase-randomised maps correlate "
            f"more than 0.5 inside it past {randomise:.1f} Å (up to {induced:.2f}); "
            f"its FSC is informative "
            f"only to {info['informative_to_a']:.1f} Å, so its 0.143 resolution says little"
        )
    return entry


def validate_half_maps(
    maps: dict,
    objectives: dict,
    modes: list,
    user_masks: dict,
    box: int,
    apix: float,
    randomise_from_a: float | str | None,
    seed: int,
    nyquist_train_a: float,
) -> MapValidation:
    """FSCs (global and in each of ``user_masks``) and sharpened maps of ``maps[(mode, half)]``.

    ``randomise_from_a``: Å from which the masked curves are corrected by noise substitution,
    ``"auto"`` (:func:`auto_randomise_from_a`) or ``None`` (no correction)."""
    freqs = shell_frequencies_inv_a(box, apix)
    out = MapValidation(freqs, columns={"frequency_1_per_a": freqs, "resolution_a": 1.0 / np.maximum(freqs, 1e-12)})
    randomise = randomise_from_a
    if randomise == "auto":
        randomise = auto_randomise_from_a(maps, modes, box, apix)
    for mode in modes:
        a, b = maps[(mode, "A")], maps[(mode, "B")]
        entry = {"objective": {h: objectives.get((mode, h)) for h in ("A", "B")}}
        res = masked_fsc(a, b, apix)
        entry["global"] = {"fsc_0143_a": res.resolution_0143_a, "fsc_05_a": res.resolution_05_a}
        out.columns[f"fsc_{mode}"] = res.curve
        out.curves[f"{mode} (global)"] = res.curve
        for name, m in user_masks.items():
            r = masked_fsc(a, b, apix, mask=m, randomise_from_a=randomise, seed=seed)
            entry[name] = _mask_entry(r, name, randomise, freqs, box, apix)
            if r.randomised is not None:
                out.columns[f"mask_induced_{mode}_{name}"] = r.randomised
                if mode == "flex":
                    out.curves[f"mask-induced ({name})"] = r.randomised
            out.columns[f"fsc_{mode}_{name}"] = r.curve
            out.curves[f"{mode} ({name})"] = r.curve
        sharp, bfac = sharpen(0.5 * (a + b), apix, res.curve, res.resolution_0143_a)
        entry["bfactor_a2"] = bfac
        out.sharpened[mode] = (sharp, f"napari-flex3d {mode} map: FSC-weighted, sharpened B={-bfac:.1f} A^2, "
                                      f"lowpass {res.resolution_0143_a:.2f} A")
        entry["beyond_training_nyquist"] = bool(res.resolution_0143_a < nyquist_train_a)
        out.entries[mode] = entry
    return out


def write_sharpened_maps(out: Path, validation: MapValidation, apix: float) -> None:
    """``{mode}_map.mrc``: each mode's FSC-weighted, sharpened average of its half maps."""
    for mode, (sharp, label) in validation.sharpened.items():
        write_map(out / f"{mode}_map.mrc", sharp.numpy(), apix, label=label)


def write_fsc_files(out: Path, validation: MapValidation, report: dict, box: int, apix: float, t_start: float) -> None:
    """``fsc.csv``, ``fsc.png`` (if matplotlib is there) and ``report.json`` (with the time since ``t_start``)."""
    freqs = validation.freqs_inv_a
    names = list(validation.columns)
    rows = [",".join(names)] + [",".join(f"{validation.columns[n][i]:.6g}" for n in names) for i in range(freqs.size)]
    write_text(out / "fsc.csv", "\n".join(rows) + "\n")
    report["fsc_png"] = _write_fsc_png(out / "fsc.png", freqs, validation.curves, f"half-map FSC, box {box} at {apix:.3g} Å")
    report["time_s"] = time.time() - t_start
    write_json(out / "report.json", report, default=float)


def _write_fsc_png(path: Path, freqs: np.ndarray, curves: dict[str, np.ndarray], title: str) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # matplotlib is optional: the CSV holds the same numbers
        return False
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for name, c in curves.items():
        if name.startswith("mask-induced"):  # the noise-substitution curve: what the mask alone correlates
            ax.plot(freqs, c, label=name, lw=0.8, ls=":", color="grey")
            continue
        ax.plot(freqs, c, label=name, lw=1.5, ls="--" if name.startswith("rigid") else "-")
    ax.axhline(0.143, color="grey", lw=0.8, ls=":")
    ax.axhline(0.5, color="grey", lw=0.8, ls=":")
    ax.set_xlabel("spatial frequency (1/Å)")
    ax.set_ylabel("FSC")
    ax.set_ylim(-0.1, 1.02)
    ax.set_title(title)
    ax.set_xlim(0, float(freqs[-1]) * 1.02)
    top = ax.twiny()  # the same axis labelled in Å
    top.set_xlim(ax.get_xlim())
    ticks = [t for t in ax.get_xticks() if 0 < t <= ax.get_xlim()[1]]
    top.set_xticks(ticks)
    top.set_xticklabels([f"{1 / t:.3g}" for t in ticks])
    top.set_xlabel("resolution (Å)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return True
