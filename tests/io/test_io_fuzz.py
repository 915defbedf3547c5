"""Fuzzing the readers: bad input gives ValueError or OSError with a message, never another exception.

Two fuzzers. The hypothesis tests below garble STAR and ``.cs`` files. The random one
(:func:`run_fuzz`) mutates a valid file of each kind, STAR (read with its images), ``.cs``,
MRC, mesh ``.npz`` and ``config.json``, at the byte, token, header-word, array or JSON-value
level; a small seeded sample runs in CI and the scratch run of the closing figures is

    FLEX3D_TESTDATA=... PYTHONPATH=src python tests/io/test_io_fuzz.py --n 10000

which prints the count per kind and every uncaught exception (none is the pass mark).
"""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from napari_flex3d.io.info import describe

FUZZ = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _read_ok_or_valueerror(path):
    """Read (through ``describe``, which also summarises) and accept only success, ValueError or OSError."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            summary = describe(path)
        except (ValueError, OSError) as exc:
            assert path.name in str(exc) or str(path) in str(exc), str(exc)
            return None
    assert summary["n_particles"] > 0
    return summary


@pytest.fixture(scope="module")
def star_text(formats_dir):
    return (formats_dir / "cryodrgn" / "relion31.star").read_text()


@pytest.fixture(scope="module")
def cs_records(formats_dir):
    return np.load(formats_dir / "cryodrgn" / "cryosparc_P12_J24_001_particles.cs", allow_pickle=False)[:20]


@FUZZ
@given(data=st.binary(max_size=2000))
def test_star_random_bytes(tmp_path, data):
    path = tmp_path / "random.star"
    path.write_bytes(data)
    _read_ok_or_valueerror(path)


TOKENS = ["nan", "inf", "", "@", "0@x.mrcs", "-1", "1e400", "abc", "data_", "loop_", "_rlnImageName", '"', "#", "\t", "data_optics", "_rlnOpticsGroup", "_rlnDefocusU", "_rlnAngleRot"]


@FUZZ
@given(
    cut=st.floats(0, 1),
    edits=st.lists(st.tuples(st.floats(0, 1), st.sampled_from(TOKENS)), max_size=6),
    drop=st.lists(st.floats(0, 1), max_size=4),
)
def test_star_garbled_table(tmp_path, star_text, cut, edits, drop):
    lines = star_text.splitlines()
    for f in drop:
        if lines:
            lines.pop(int(f * (len(lines) - 1)))
    tokens = "\n".join(lines).split(" ")
    for f, tok in edits:
        tokens[int(f * (len(tokens) - 1))] = tok
    text = " ".join(tokens)
    text = text[: max(1, int(cut * len(text)))] if cut < 0.95 else text
    path = tmp_path / "garbled.star"
    path.write_text(text)
    _read_ok_or_valueerror(path)


@FUZZ
@given(data=st.binary(max_size=3000), keep_magic=st.booleans())
def test_cs_random_bytes(tmp_path, cs_records, data, keep_magic):
    buf = io.BytesIO()
    np.save(buf, cs_records)
    raw = buf.getvalue()
    if keep_magic:  # a real npy header followed by garbage / truncated data
        data = raw[: 128 + len(data) % 512] + data
    path = tmp_path / "random.cs"
    path.write_bytes(data)
    _read_ok_or_valueerror(path)


NUMERIC = st.sampled_from([np.nan, np.inf, -np.inf, 0.0, -1.0, 1e30, 3.0])


@FUZZ
@given(
    drop=st.sets(st.integers(0, 33), max_size=6),
    row=st.integers(0, 19),
    field=st.integers(0, 33),
    value=NUMERIC,
    path_value=st.sampled_from([b"", b">", b"x.mrc", b"\xff\xfe", b">J1/a.mrcs"]),
)
def test_cs_garbled_records(tmp_path, cs_records, drop, row, field, value, path_value):
    recs = cs_records.copy()
    name = recs.dtype.names[field]
    if recs.dtype[name].kind == "f":
        recs[name][row] = value
    elif name == "blob/path":
        recs[name][row] = path_value
    keep = [n for i, n in enumerate(recs.dtype.names) if i not in drop]
    recs = np.array(recs[keep], dtype=[(n, recs.dtype[n]) for n in keep])
    path = tmp_path / "garbled.cs"
    with open(path, "wb") as fh:
        np.save(fh, recs)
    _read_ok_or_valueerror(path)


# ----------------------------------------------------------------------------- random fuzzer (all readers)

KINDS = ("star", "cs", "mrc", "mesh", "config")
_ODD_VALUES = [0, -1, 1, 2**31 - 1, -(2**31), 2**63, 1e400, -1e-300, float("nan"), float("inf"), "", "x", None, True,
               [], [1, "a"], {}, 0.5, 3]


def _seeds(formats_dir: Path, work: Path) -> dict:
    """Valid inputs of each kind, written once into ``work``: the mutations start from these."""
    import shutil

    from napari_flex3d.config import TrainConfig
    from napari_flex3d.io.atomic import write_config_json
    from napari_flex3d.io.mrc import write_map
    from napari_flex3d.mesh.build import build_grid_mesh
    from napari_flex3d.mesh.mesh import save_mesh

    shutil.copy(formats_dir / "cryodrgn" / "relion31.mrcs", work / "relion31.mrcs")  # the STAR's images
    rng = np.random.default_rng(0)
    write_map(work / "seed.mrc", rng.random((12, 12, 12)).astype(np.float32), 2.0)
    mask = np.zeros((16,) * 3, bool)
    mask[4:-4, 4:-4, 4:-4] = True
    mesh = build_grid_mesh(mask, 2.0, cell_size_a=8.0)
    save_mesh(mesh.replace(rigidity_weights=np.ones(mesh.n_cells, np.float32)), work / "seed.npz")
    write_config_json(work / "seed.json", TrainConfig(particles="p.star", map="m.mrc", out="o"), cli_argv=["flex3d"])
    return {
        "star": (formats_dir / "cryodrgn" / "relion31.star").read_text(),
        "cs": np.load(formats_dir / "cryodrgn" / "cryosparc_P12_J24_001_particles.cs", allow_pickle=False)[:20],
        "mrc": (work / "seed.mrc").read_bytes(),
        "mesh": dict(np.load(work / "seed.npz", allow_pickle=False)),
        "config": json.loads((work / "seed.json").read_text()),
    }


def _bytes_noise(rng, raw: bytes) -> bytes:
    """Flip, insert, delete or truncate bytes."""
    b = bytearray(raw)
    for _ in range(int(rng.integers(1, 6))):
        op = int(rng.integers(4))
        at = int(rng.integers(len(b) + 1))
        if op == 0 and b:
            b[min(at, len(b) - 1)] = int(rng.integers(256))
        elif op == 1:
            b[at:at] = rng.bytes(int(rng.integers(1, 16)))
        elif op == 2:
            del b[at: at + int(rng.integers(1, 64))]
        else:
            del b[at:]
    return bytes(b)


def _mutate_star(rng, text: str) -> bytes:
    lines = text.splitlines()
    for _ in range(int(rng.integers(0, 2))):
        if lines:
            lines.pop(int(rng.integers(len(lines))))
    tokens = "\n".join(lines).split(" ")
    values = [i for i, t in enumerate(tokens) if t.strip() and t.strip()[0] in "-0123456789"]  # data, mostly
    for _ in range(int(rng.integers(0, 3))):
        at = int(rng.choice(values)) if values and rng.random() < 0.8 else int(rng.integers(len(tokens)))
        tokens[at] = str(rng.choice(TOKENS + ["2@relion31.mrcs", "99@relion31.mrcs", "1e9", "-0.0", "1e-30"]))
    raw = " ".join(tokens).encode()
    return _bytes_noise(rng, raw) if rng.random() < 0.15 else raw


def _mutate_cs(rng, records: np.ndarray) -> bytes:
    recs = records.copy()
    names = list(recs.dtype.names)
    for _ in range(int(rng.integers(1, 4))):
        name = names[int(rng.integers(len(names)))]
        row = int(rng.integers(len(recs)))
        kind = recs.dtype[name].kind
        if kind == "f":
            recs[name][row] = rng.choice([np.nan, np.inf, -np.inf, 0.0, -1.0, 1e30])
        elif kind in "iu":
            recs[name][row] = rng.choice([0, 1, 2, 255, 10**6]) if kind == "u" else rng.choice([-1, 0, 2**31 - 1])
        elif kind == "S":
            recs[name][row] = rng.choice([b"", b">", b"\xff\xfe", b"x.mrc", b">J1/a.mrcs"])
    keep = [n for n in names if rng.random() > 0.1]
    recs = np.array(recs[keep], dtype=[(n, recs.dtype[n]) for n in keep]) if keep else recs
    buf = io.BytesIO()
    np.save(buf, recs[: int(rng.integers(0, len(recs) + 1))])
    raw = buf.getvalue()
    return _bytes_noise(rng, raw) if rng.random() < 0.4 else raw


def _mutate_mrc(rng, raw: bytes) -> bytes:
    b = bytearray(raw)
    for _ in range(int(rng.integers(1, 4))):
        word = int(rng.integers(0, 56))  # the 56 header words before the labels
        value = rng.choice([0, -1, 1, 3, 2**31 - 1, 1024, 12]) if rng.random() < 0.6 else None
        b[4 * word: 4 * word + 4] = (np.int32(value).tobytes() if value is not None
                                     else np.float32(rng.choice([np.nan, np.inf, -2.0, 0.0, 1e38])).tobytes())
    if rng.random() < 0.3:  # NaN voxels
        b[1024 + 4 * int(rng.integers(12**3)):][:4] = np.float32(np.nan).tobytes()
    raw = bytes(b)
    return _bytes_noise(rng, raw) if rng.random() < 0.4 else raw


def _mutate_mesh(rng, arrays: dict) -> bytes:
    arrays = {k: np.array(v) for k, v in arrays.items()}
    for _ in range(int(rng.integers(1, 3))):
        key = list(arrays)[int(rng.integers(len(arrays)))] if arrays else "cells"
        op = int(rng.integers(6))
        if op == 0:
            arrays.pop(key, None)
        elif op == 1 and key in arrays and arrays[key].size and arrays[key].dtype.kind in "iuf":
            flat = arrays[key].reshape(-1).copy()
            flat[int(rng.integers(flat.size))] = rng.choice([np.nan, np.inf, -1, 10**9, 0]) if flat.dtype.kind == "f" \
                else rng.choice([-1, 10**9, 0])
            arrays[key] = flat.reshape(arrays[key].shape)
        elif op == 2:
            arrays[key] = rng.random(tuple(int(d) for d in rng.integers(0, 5, size=int(rng.integers(0, 3)))))
        elif op == 3 and "cells" in arrays and arrays["cells"].ndim == 2 and arrays["cells"].shape[1] == 4 \
                and len(arrays["cells"]):  # inverted or degenerate cells
            cells = arrays["cells"].copy()
            i = int(rng.integers(len(cells)))
            cells[i] = cells[i][[1, 0, 2, 3]] if rng.random() < 0.5 else cells[i][[0, 0, 2, 3]]
            arrays["cells"] = cells
        elif op == 4 and "meta_json" in arrays:
            try:
                meta = json.loads(str(arrays["meta_json"]))
            except ValueError:  # garbled by an earlier mutation
                meta = {}
            meta = meta if isinstance(meta, dict) else {}
            meta[str(rng.choice(["box", "apix", "version", "format", "info"]))] = _ODD_VALUES[int(rng.integers(len(_ODD_VALUES)))]
            arrays["meta_json"] = np.array(json.dumps(meta))
        else:
            arrays["meta_json"] = np.array(str(rng.choice(["", "{", "[]", "null", '{"format": 1}'])))
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    raw = buf.getvalue()
    return _bytes_noise(rng, raw) if rng.random() < 0.2 else raw


def _mutate_config(rng, doc: dict) -> bytes:
    doc = json.loads(json.dumps(doc))
    settings = doc.get("settings", {})
    for _ in range(int(rng.integers(1, 4))):
        op = int(rng.integers(5))
        if op <= 2 and settings:
            settings[str(rng.choice(list(settings)))] = _ODD_VALUES[int(rng.integers(len(_ODD_VALUES)))]
        elif op == 3:
            settings[str(rng.choice(["unknown", "epochs", "kind"]))] = 1
        else:
            doc[str(rng.choice(["kind", "settings", "provenance"]))] = _ODD_VALUES[int(rng.integers(len(_ODD_VALUES)))]
    raw = json.dumps(doc, default=str).encode()
    return _bytes_noise(rng, raw) if rng.random() < 0.2 else raw


def _read(kind: str, path: Path):
    """The reader a user's file of ``kind`` goes through (particle files with their first images)."""
    if kind in ("star", "cs"):
        from napari_flex3d.io.particles import read_particles

        ps = read_particles(path)
        describe(path)
        if len(ps) and kind == "star":
            ps.images(np.arange(min(2, len(ps))))
        return ps
    if kind == "mrc":
        from napari_flex3d.io.mrc import read_map

        return read_map(path), describe(path)
    if kind == "mesh":
        from napari_flex3d.mesh.mesh import load_mesh

        return load_mesh(path, box=16, apix=2.0)
    from napari_flex3d.config import read_config_json

    return read_config_json(path)


_MUTATE = {"star": _mutate_star, "cs": _mutate_cs, "mrc": _mutate_mrc, "mesh": _mutate_mesh, "config": _mutate_config}
_SUFFIX = {"star": ".star", "cs": ".cs", "mrc": ".mrc", "mesh": ".npz", "config": ".json"}


def run_fuzz(n: int, seed: int, formats_dir: Path, work: Path) -> dict:
    """``n`` mutated inputs, round robin over :data:`KINDS`: ``{"counts": {kind: {outcome: k}}, "uncaught": [...]}``.

    An outcome is ``ok``, ``ValueError`` or ``OSError`` (each with a non-empty message);
    anything else, or an empty message, is listed in ``uncaught`` with its seed.
    """
    seeds = _seeds(formats_dir, work)
    counts = {k: {} for k in KINDS}
    uncaught = []
    for i in range(n):
        kind = KINDS[i % len(KINDS)]
        rng = np.random.default_rng([seed, i])
        path = work / f"case{_SUFFIX[kind]}"
        path.write_bytes(_MUTATE[kind](rng, seeds[kind]))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                _read(kind, path)
                outcome = "ok"
            except (ValueError, OSError) as exc:
                outcome = "ValueError" if isinstance(exc, ValueError) else "OSError"
                if not str(exc).strip():
                    uncaught.append((kind, i, f"{outcome} without a message"))
            except Exception as exc:  # noqa: BLE001 - what the fuzzer is looking for
                outcome = type(exc).__name__
                uncaught.append((kind, i, f"{outcome}: {str(exc)[:200]}"))
        counts[kind][outcome] = counts[kind].get(outcome, 0) + 1
    return {"counts": counts, "uncaught": uncaught}


def test_random_fuzz_sample(formats_dir, tmp_path):
    """A seeded sample of 150 inputs (30 per reader, seconds): every failure a ValueError/OSError."""
    result = run_fuzz(150, seed=1, formats_dir=formats_dir, work=tmp_path)
    assert result["uncaught"] == []
    for kind, outcomes in result["counts"].items():
        assert sum(outcomes.values()) == 30
        assert set(outcomes) - {"ok"}, f"{kind}: no mutation was refused; the fuzzer is not biting"


if __name__ == "__main__":
    import argparse
    import sys
    import tempfile
    import time

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from conftest import FORMATS

    parser = argparse.ArgumentParser(description="scratch fuzz run of the readers")
    parser.add_argument("--n", type=int, default=10000)
    parser.add_argument("--seed", type=int, default=0)
    cli_args = parser.parse_args()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as d:
        res = run_fuzz(cli_args.n, cli_args.seed, FORMATS, Path(d))
    print(f"{cli_args.n} inputs (seed {cli_args.seed}) in {time.perf_counter() - t0:.0f} s")
    for kind, outcomes in res["counts"].items():
        print(f"  {kind:7s} " + ", ".join(f"{k} {v}" for k, v in sorted(outcomes.items())))
    print(f"uncaught: {len(res['uncaught'])}")
    for row in res["uncaught"][:50]:
        print("  ", row)
