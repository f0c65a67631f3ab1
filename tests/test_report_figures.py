"""The numbers behind the report's new figures (power spectra, intensity histograms, per-class
intervals) on inputs with a known answer, and the figures themselves as non-empty PNGs."""

from __future__ import annotations

import numpy as np
import pytest

from cryoet_forge.evaluate import figures
from cryoet_forge.evaluate.downstream import confidence_interval


def _shell_of(n: int, frequency: int) -> np.ndarray:
    """The indices of a 3D (n, n, n) FFT grid whose radius rounds to ``frequency`` (the test's own count)."""
    k = np.fft.fftfreq(n) * n
    z, y, x = np.meshgrid(k, k, k, indexing="ij")
    return np.rint(np.sqrt(z ** 2 + y ** 2 + x ** 2)) == frequency


def test_power_spectrum_of_a_constant_is_all_in_shell_zero():
    n, c = 16, 2.5
    spectrum = figures.radial_power_spectrum(np.full((n, n, n), c))
    assert spectrum.shape == (n // 2 + 1,)
    assert spectrum[0] == pytest.approx(n ** 3 * c ** 2)  # |F(0)|^2 / N = (N c)^2 / N
    assert np.allclose(spectrum[1:], 0.0, atol=1e-9)


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_power_spectrum_of_a_cosine_peaks_at_its_frequency(axis):
    n, f = 16, 3
    coordinate = np.arange(n)
    wave = np.cos(2 * np.pi * f * coordinate / n)
    shape = [1, 1, 1]
    shape[axis] = n
    volume = np.broadcast_to(wave.reshape(shape), (n, n, n)).astype(np.float64)
    spectrum = figures.radial_power_spectrum(volume)
    # two Fourier coefficients of |F| = N / 2 at +-f along one axis; the shell's mean spreads them
    # over the shell's members
    expected = 2 * (n ** 3 / 2) ** 2 / n ** 3 / _shell_of(n, f).sum()
    assert spectrum[f] == pytest.approx(expected)
    others = np.delete(spectrum, f)
    assert np.all(others < 1e-9 * spectrum[f])


def test_power_spectrum_of_white_noise_is_flat_at_its_variance():
    volume = np.random.default_rng(0).normal(0.0, 3.0, (32, 32, 32))
    spectrum = figures.radial_power_spectrum(volume)
    # shell 1 holds few frequencies (noisy mean); the rest are within 10% of the variance 9
    assert np.allclose(spectrum[2:], 9.0, rtol=0.1)


def test_power_spectrum_rejects_what_is_not_a_volume():
    with pytest.raises(ValueError, match="2D or 3D"):
        figures.radial_power_spectrum(np.zeros(8))


def test_mean_power_spectrum_is_normalised_per_volume():
    rng = np.random.default_rng(1)
    volumes = rng.normal(size=(3, 16, 16, 16))
    reference = figures.mean_power_spectrum(volumes)
    rescaled = figures.mean_power_spectrum([7.0 * v + 100.0 for v in volumes])  # contrast and offset removed
    assert np.allclose(rescaled, reference)
    assert reference[0] == pytest.approx(0.0, abs=1e-9)  # z-scored: no mean left
    single = figures.mean_power_spectrum(volumes[:1])
    assert np.allclose(single, figures.radial_power_spectrum(figures.zscore(volumes[0])))


def test_spectrum_frequencies_end_at_nyquist():
    freq = figures.spectrum_frequencies(16, 10.0)
    assert freq.shape == (9,)
    assert freq[0] == 0.0 and freq[-1] == pytest.approx(1 / 20.0)  # 1 / (2 x voxel size)


def test_intensity_histogram_is_a_density_of_z_scored_voxels_with_the_tails_kept():
    rng = np.random.default_rng(2)
    volumes = rng.normal(size=(4, 8, 8, 8))
    edges = figures.HISTOGRAM_EDGES
    density = figures.intensity_histogram(volumes, edges)
    assert density.shape == (len(edges) - 1,)
    assert float(np.sum(density * np.diff(edges))) == pytest.approx(1.0)
    assert np.allclose(figures.intensity_histogram([3.0 * v - 5.0 for v in volumes], edges), density)
    # a voxel 50 standard deviations out is counted in the last bin, not dropped
    spike = np.zeros((8, 8, 8))
    spike[0, 0, 0] = 1.0
    outer = figures.intensity_histogram([spike], edges)
    assert outer[-1] > 0 and float(np.sum(outer * np.diff(edges))) == pytest.approx(1.0)


def test_per_class_intervals_are_the_t_interval_over_seeds():
    per_seed = [{"a": 0.5, "b": 1.0, "c": None}, {"a": 0.7, "b": None, "c": None}, {"a": 0.9, "b": 0.0, "c": None}]
    out = figures.per_class_intervals(per_seed, ["a", "b", "c"], 0.95)
    assert out["a"] == pytest.approx(confidence_interval([0.5, 0.7, 0.9], 0.95))
    assert out["a"][1] < 0.7 < out["a"][2]
    assert out["b"] == pytest.approx(confidence_interval([1.0, 0.0], 0.95))  # the seed without the class left out
    assert out["c"] is None
    assert figures.per_class_intervals([{"a": 0.25}], ["a"], 0.95)["a"] == (0.25, 0.25, 0.25)


def _png(path):
    from matplotlib.image import imread

    image = imread(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    assert float(image[..., :3].std()) > 0.01  # not a blank canvas
    return image


def test_the_new_figures_are_drawn(tmp_path):
    rng = np.random.default_rng(3)
    sets = {"experimental (simulated by tilt-series) test": rng.normal(size=(4, 16, 16, 16)),
            "traditional (fourier)": rng.normal(size=(4, 16, 16, 16)),
            "GAN (refinement: unet3d + sn-wgan, identity loss)": rng.normal(size=(4, 16, 16, 16))}
    _png(figures.save_power_spectra(tmp_path / "spectra.png", sets, 10.0, title="spectra"))
    _png(figures.save_intensity_histograms(tmp_path / "histograms.png", sets, title="histograms"))
    per_class = {"train on experimental": [{"a": 0.9, "b": 0.4}],
                 "train on traditional": [{"a": 0.5, "b": 0.0}, {"a": 0.6, "b": 0.1}, {"a": 0.4, "b": None}],
                 "train on GAN": [{"a": 0.8, "b": 0.3}, {"a": 0.7, "b": 0.2}, {"a": 0.9, "b": 0.5}]}
    _png(figures.save_per_class_accuracy(tmp_path / "per_class.png", ["a", "b"], per_class, 0.95))
    inputs = [rng.normal(size=(16, 16, 16)) for _ in range(2)]
    outputs = [v + 0.5 * rng.normal(size=v.shape) for v in inputs]
    image = _png(figures.save_particle_pairs(tmp_path / "pairs.png", inputs, outputs, ["a", "b"], "input: x"))
    assert image.shape[1] > image.shape[0]  # six panels across, two particles down
    with pytest.raises(ValueError, match="2 inputs, 1 outputs"):
        figures.save_particle_pairs(tmp_path / "bad.png", inputs, outputs[:1], ["a", "b"], "input: x")
