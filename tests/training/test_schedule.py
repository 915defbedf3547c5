"""The learning-rate schedule after frequency marching (a pure function of the run's position)."""

from __future__ import annotations

import math

import pytest

from napari_flex3d.training.schedule import lr_factor


def test_lr_factor_is_constant_through_the_ramp_then_a_half_cosine():
    epochs, final = 12, 0.1  # the band ramp ends at 8 epochs (two thirds)
    assert [lr_factor(t, epochs, final) for t in (0.0, 4.0, 8.0)] == [1.0, 1.0, 1.0]
    assert lr_factor(10.0, epochs, final) == pytest.approx(final + (1 - final) * 0.5)  # half way down
    assert lr_factor(12.0, epochs, final) == pytest.approx(final)
    values = [lr_factor(8 + 4 * i / 50, epochs, final) for i in range(51)]
    assert all(a >= b for a, b in zip(values, values[1:]))
    assert lr_factor(9.0, epochs, final, band_ramp_epochs=6) == pytest.approx(
        final + (1 - final) * 0.5 * (1 + math.cos(math.pi * 0.5))
    )
    assert lr_factor(11.0, epochs, 1.0) == 1.0  # the default: constant
    with pytest.raises(ValueError, match="lr_final"):
        lr_factor(1.0, epochs, 0.0)
