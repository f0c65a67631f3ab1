"""Simulation: structures -> density maps -> subtomograms (``fourier`` and ``tilt-series``)."""
