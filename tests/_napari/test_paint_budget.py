"""The paint budget's decisions, with the frame times and renderer set by hand (no timing)."""

from __future__ import annotations


def test_volumes_wait_on_software_gl_even_when_recent_3d_frames_were_cheap(make_napari_viewer):
    from napari_flex3d._napari._paint_budget import PaintBudget

    viewer = make_napari_viewer()
    budget = PaintBudget(viewer)
    budget.frame_ms.clear()
    budget.frame_ms.extend([12.0, 20.0])  # a 3D scene of surfaces: cheap frames
    viewer.dims.ndisplay = 3

    budget.renderer = "llvmpipe (LLVM 15.0.7, 256 bits)"
    assert budget.affordable()  # the frames alone say yes ...
    assert not budget.affords_volumes()  # ... but a volume added now would be ray-cast on the CPU

    budget.renderer = "NVIDIA H100 80GB HBM3/PCIe/SSE2"
    assert budget.affords_volumes()
    budget.frame_ms.append(450.0)  # a slow recent frame on any renderer
    assert not budget.affords_volumes()

    viewer.dims.ndisplay = 2  # slices are cheap everywhere
    budget.renderer = "llvmpipe"
    assert budget.affords_volumes()
