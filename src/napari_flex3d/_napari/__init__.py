"""The napari front end: the only place that imports Qt, napari, magicgui or superqt."""
