"""Untrusted files: no pickle is ever executed, and users' names cannot become script commands.

Each crafted file carries a payload whose ``__reduce__`` would create a marker file when
unpickled; every reader must refuse the file with a ``ValueError`` naming it, and the marker
must not exist afterwards. A grep over ``src/`` keeps every ``torch.load`` at
``weights_only=True``, every ``np.load`` at ``allow_pickle=False`` and the only unpickler the
arrays-only one of ``training/latents.py``.
"""

from __future__ import annotations

import io
import pickle
import re
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

SRC = Path(__file__).resolve().parents[2] / "src" / "napari_flex3d"


class _Payload:
    """Unpickling this calls ``Path(marker).touch()``: proof that code ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def _python_files():
    return sorted(SRC.rglob("*.py"))


def _calls(text: str, name: str) -> list[str]:
    """The argument text of every call ``name(...)`` in ``text`` (balanced parentheses)."""
    out = []
    for m in re.finditer(re.escape(name) + r"\(", text):
        depth, i = 1, m.end()
        while depth and i < len(text):
            depth += {"(": 1, ")": -1}.get(text[i], 0)
            i += 1
        out.append(text[m.end(): i - 1])
    return out


def test_every_load_in_src_refuses_pickles():
    offenders = []
    for path in _python_files():
        text = path.read_text()
        rel = path.relative_to(SRC)
        for args in _calls(text, "torch.load"):
            if "weights_only=True" not in args:
                offenders.append(f"{rel}: torch.load({args})")
        for args in _calls(text, "np.load") + _calls(text, "numpy.load"):
            if "allow_pickle=False" not in args:
                offenders.append(f"{rel}: np.load({args})")
        if re.search(r"\bpickle\.loads?\(|\bUnpickler\(|\bjoblib\.load\(|\bdill\.", text) and rel != Path("training/latents.py"):
            offenders.append(f"{rel}: unpickles")
    assert not offenders, "\n".join(offenders)


def test_checkpoint_with_a_pickle_payload_is_refused(tmp_path):
    from napari_flex3d.io.checkpoint import load_checkpoint

    marker = tmp_path / "ran"
    path = tmp_path / "last.pt"
    torch.save({"format": "napari-flex3d checkpoint", "model": _Payload(marker)}, path)
    with pytest.raises(ValueError, match="last.pt"):
        load_checkpoint(path)
    assert not marker.exists()


def test_mesh_with_a_pickled_array_is_refused(tmp_path):
    from napari_flex3d.mesh.mesh import load_mesh

    marker = tmp_path / "ran"
    path = tmp_path / "mesh.npz"
    payload = np.empty(1, dtype=object)
    payload[0] = _Payload(marker)
    np.savez(path, vertices_a=payload, cells=np.zeros((1, 4), np.int64), meta_json=np.array("{}"))
    with pytest.raises(ValueError, match="mesh.npz"):
        load_mesh(path)
    assert not marker.exists()


def test_latents_npy_and_pkl_with_a_payload_are_refused(tmp_path):
    from napari_flex3d.model.run import final_latents
    from napari_flex3d.training.latents import read_latents_file

    marker = tmp_path / "ran"
    payload = np.empty(2, dtype=object)
    payload[:] = [_Payload(marker), 1.0]
    np.save(tmp_path / "latents.npy", payload, allow_pickle=True)
    with pytest.raises(ValueError, match="allow_pickle|pickle"):
        final_latents(tmp_path)
    with pytest.raises(ValueError):
        read_latents_file(tmp_path / "latents.npy")
    (tmp_path / "z.pkl").write_bytes(pickle.dumps(_Payload(marker)))
    with pytest.raises(ValueError, match="z.pkl"):
        read_latents_file(tmp_path / "z.pkl")
    assert not marker.exists()


def test_cs_with_a_pickled_object_is_refused(tmp_path):
    from napari_flex3d.io.particles import read_particles

    marker = tmp_path / "ran"
    payload = np.empty(2, dtype=object)
    payload[:] = [_Payload(marker), 1.0]
    with open(tmp_path / "particles.cs", "wb") as fh:
        np.save(fh, payload, allow_pickle=True)
    with pytest.raises(ValueError, match="particles.cs"):
        read_particles(tmp_path / "particles.cs")
    assert not marker.exists()


def test_a_zip_bomb_like_member_in_a_mesh_is_a_value_error(tmp_path):
    """A mesh .npz whose member is not an .npy at all (a foreign zip) is refused naming the file."""
    from napari_flex3d.mesh.mesh import load_mesh

    path = tmp_path / "foreign.npz"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("vertices_a.npy", b"not an npy header")
    with pytest.raises(ValueError, match="foreign.npz"):
        load_mesh(path)


@pytest.mark.parametrize("name", ['a"b', "a;close all", "a\nopen evil.py", "a\rb", "a\x00b"])
def test_cxc_refuses_names_that_would_break_out_of_an_argument(tmp_path, name):
    from napari_flex3d.explore.series import write_volume_series

    with pytest.raises(ValueError, match="ChimeraX"):
        write_volume_series(np.ones((3, 8, 8, 8), np.float32), 2.0, tmp_path, prefix=name)
    assert not list(tmp_path.iterdir())  # refused before any frame was written


def test_cxc_quotes_a_name_with_spaces(tmp_path):
    from napari_flex3d.explore.series import cxc_quoted, write_volume_series

    vols = np.random.default_rng(0).random((3, 8, 8, 8)).astype(np.float32)
    _, script = write_volume_series(vols, 2.0, tmp_path, prefix="my run #2")
    assert 'open "my run #2_*.mrc" vseries true' in script.read_text()
    assert cxc_quoted("frame_*.mrc") == "frame_*.mrc"


def test_checkpoint_round_trip_still_loads(tmp_path):
    """The refusals above are not a reader that refuses everything."""
    from napari_flex3d.io.checkpoint import load_checkpoint, save_checkpoint

    save_checkpoint(tmp_path / "c.pt", {"epoch": 3, "latents": torch.zeros(4, 2)})
    assert load_checkpoint(tmp_path / "c.pt")["epoch"] == 3
    buf = io.BytesIO()
    np.save(buf, np.arange(3.0))
    (tmp_path / "latents.npy").write_bytes(buf.getvalue())
    from napari_flex3d.model.run import final_latents

    assert final_latents(tmp_path).tolist() == [0.0, 1.0, 2.0]
