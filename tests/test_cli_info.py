"""``flex3d info FILE --json``: the JSON a user (or a script) gets."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_flex3d.cli import main


def run_info(capsys, *args):
    code = main(["info", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


def test_info_star_json(formats_dir, capsys):
    code, out, _ = run_info(capsys, formats_dir / "cryodrgn/relion31.star", "--json")
    assert code == 0
    s = json.loads(out)
    assert s["kind"] == "particles" and s["format"] == "relion3.1" and s["n_particles"] == 5
    assert s["n_optics_groups"] == 1 and s["box"] == 256 and s["apix"] == 2.806
    assert s["half_sets"] == {"0": 5, "1": 0, "unknown": 0}
    f = s["first_particle"]
    np.testing.assert_allclose(f["euler_deg"], [-102.30296, 82.318041, 124.706463], atol=1e-6)
    np.testing.assert_allclose(f["shift_a"], [0.019324, -0.64686])
    np.testing.assert_allclose(f["shift_px"], [0.0068867, -0.2305274], atol=1e-6)
    assert (f["defocus_u_a"], f["defocus_v_a"], f["defocus_angle_deg"]) == (13108.082418, 12845.582418, -160.39)
    assert np.asarray(f["matrix"]).shape == (3, 3)
    assert f["image"].endswith("relion31.mrcs") and f["image"].startswith("1@")
    assert s["images"]["n_stacks"] == 1 and s["images"]["n_existing"] == 1 and s["images"]["n_missing"] == 0


def test_info_cs_json_missing_images(formats_dir, capsys):
    code, out, _ = run_info(capsys, formats_dir / "cryodrgn/cryosparc_P12_J24_001_particles.cs", "--json")
    s = json.loads(out)
    assert code == 0 and s["format"] == "cryosparc" and s["n_particles"] == 2019
    assert s["half_sets"] == {"0": 1010, "1": 1009, "unknown": 0}
    assert s["images"]["n_stacks"] == 50 and s["images"]["n_missing"] == 50 and len(s["images"]["missing_examples"]) == 5
    assert s["optics_groups"][0]["inverted"] is True
    # row 0's A is the transpose of expm([pose]x) (README's R)
    np.testing.assert_allclose(np.asarray(s["first_particle"]["matrix"])[0], [0.58163, -0.37730, -0.72066], atol=2e-5)
    np.testing.assert_allclose(s["first_particle"]["shift_px"], [11.334375, -1.828125], rtol=1e-6)


def test_info_root_finds_moved_stack(formats_dir, tmp_path, capsys):
    import shutil

    shutil.copyfile(formats_dir / "cryodrgn/relion31.star", tmp_path / "relion31.star")
    code, out, _ = run_info(capsys, tmp_path / "relion31.star", "--json")
    assert json.loads(out)["images"]["n_missing"] == 1
    code, out, _ = run_info(capsys, tmp_path / "relion31.star", "--json", "--root", formats_dir / "cryodrgn")
    assert json.loads(out)["images"]["n_existing"] == 1


def test_info_map_json(formats_dir, capsys):
    code, out, _ = run_info(capsys, formats_dir / "mrcfile/EMD-3197.map", "--json")
    s = json.loads(out)
    assert code == 0 and s["kind"] == "mrc" and s["shape_zyx"] == [20, 20, 20] and s["mode"] == 2
    assert s["apix"] == pytest.approx(11.4)
    np.testing.assert_allclose([s["min"], s["max"], s["mean"]], [-4.13375, 5.57674, 0.783612], atol=1e-5)
    code, out, _ = run_info(capsys, formats_dir / "cryodrgn/empiar_10076_7.mrc", "--json")
    s = json.loads(out)
    assert s["apix"] is None and s["shape_zyx"] == [7, 320, 320]
    np.testing.assert_allclose([s["min"], s["max"]], [-4.34950, 5.53454], atol=1e-5)
    code, out, _ = run_info(capsys, formats_dir / "mrcfile/EMD-3001.map", "--json")
    s = json.loads(out)  # axes re-ordered by mapc/mapr/maps = 3, 1, 2
    assert s["shape_zyx"] == [73, 25, 43] and s["axis_order"] == [3, 1, 2] and s["ispg"] == 4
    np.testing.assert_allclose(s["voxel_size_xyz_a"], [0.44825, 0.3925, 0.45875], rtol=1e-5)
    np.testing.assert_allclose([s["min"], s["max"], s["mean"]], [-0.368143, 0.72161, 0.000532967], atol=1e-6)


def test_info_text(formats_dir, capsys):
    code, out, _ = run_info(capsys, formats_dir / "cryodrgn/relion31.6opticsgroups.star")
    assert code == 0 and "139 particles" in out and "6 optics group(s)" in out and "opticsGroup5" in out
    code, out, _ = run_info(capsys, formats_dir / "MRCFile.jl/emd_3197_f16.mrc")
    assert code == 0 and "mode 12" in out


@pytest.mark.parametrize(
    "name,message",
    [
        ("cylindra/job.star", "not a particle STAR file"),
        ("cryosparc-tools/4k_dataset.cs", "zero particles"),
        ("README.md", "unknown file suffix"),
        ("absent.star", "no such file"),
    ],
)
def test_info_errors_are_printed_not_raised(formats_dir, capsys, name, message):
    code, out, err = run_info(capsys, formats_dir / name, "--json")
    assert code == 2 and out == "" and message in err and "Traceback" not in err
