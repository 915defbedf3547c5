"""The Train widget's form carries the input options of the CLI (one declaration, ``TrainConfig``):
``--resample-map`` as a tick box and ``--max-bad-image-fraction``, checked by the same validate()."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.gui


def test_train_form_offers_resample_map_and_the_bad_image_fraction(qtbot):
    from napari_flex3d._napari._train_widget import FROM_SESSION, config_form, form_values
    from napari_flex3d.config import TrainConfig

    form = config_form(TrainConfig, skip=FROM_SESSION + ("device",))
    assert form["resample_map"].widget_type == "CheckBox" and form["resample_map"].value is False
    assert form["max_bad_image_fraction"].value == pytest.approx(0.05)
    form["resample_map"].value = True
    form["max_bad_image_fraction"].value = 0.2
    config = TrainConfig(**form_values(TrainConfig, form))
    assert config.resample_map is True and config.max_bad_image_fraction == pytest.approx(0.2)
    form["max_bad_image_fraction"].value = 3.0
    with pytest.raises(ValueError, match="--max-bad-image-fraction must be <= 1, got 3"):
        TrainConfig(**form_values(TrainConfig, form))
