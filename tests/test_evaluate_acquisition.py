"""forge evaluate's traditional simulation given the acquisition a user knows ([traditional.acquisition])."""

from __future__ import annotations

import pytest
from test_simulate_acquisition import write_relion5

from cryoet_forge.errors import ConfigError, InputError
from cryoet_forge.evaluate.config import config_from_dict, traditional_acquisition


def traditional(acquisition: dict, simulator: str = "tilt-series", options: dict | None = None):
    return config_from_dict({"traditional": {"simulator": simulator, "options": options or {},
                                             "acquisition": acquisition}}).traditional


def test_values_in_user_units_reach_the_simulator_and_are_recorded_with_their_source():
    options, used, notes = traditional_acquisition(traditional(
        {"tilt_range": [-50, 50], "tilt_step": 2.5, "dose": 200, "voltage_kv": 300, "defocus": 4},
        options={"crowding": 1}))
    assert options == {"crowding": 1, "tilt_range": [-50.0, 50.0], "tilt_step": 2.5, "dose": 200.0,
                       "voltage_kv": 300.0, "defocus_um": [-4.0, -4.0]}  # the simulator's underfocus negative
    assert used["defocus_underfocus_um"] == [4.0, 4.0] and used["dose_e_per_A2"] == 200.0
    assert used["sources"]["dose_e_per_A2"] == "traditional.acquisition.dose"
    assert used["sources"]["cs_mm"] == "the tilt-series default"
    assert notes == []


def test_a_relion5_tomograms_star_gives_tilts_dose_and_defocus(tmp_path):
    star = write_relion5(tmp_path / "project")
    options, used, _ = traditional_acquisition(traditional({"star": str(star), "dose": 50}))
    assert options["tilt_range"] == [-45.0, 45.0] and options["tilt_step"] == 15
    assert options["dose"] == 50.0  # the config's value wins over the STAR's 21
    assert options["voltage_kv"] == 200 and options["amplitude_contrast"] == 0.1
    assert used["defocus_underfocus_um"] == pytest.approx([2.99, 3.12])
    assert used["sources"]["tilt_range_deg"] == str(star)
    assert used["sources"]["dose_e_per_A2"] == "traditional.acquisition.dose"


@pytest.mark.parametrize(("acquisition", "simulator", "options", "message"), [
    ({"dose": 30}, "fourier", {}, "traditional.acquisition.dose: the fourier simulator has no dose"),
    ({"defocus": -4}, "tilt-series", {}, "traditional.acquisition.defocus -4: underfocus is positive (um)"),
    ({"defocus": [2, 3, 4]}, "tilt-series", {}, "traditional.acquisition.defocus must be one number or [low, high]"),
    ({"tilt_range": 60}, "tilt-series", {}, "traditional.acquisition.tilt_range must be [low, high] in degrees"),
    ({"dose": 0}, "tilt-series", {}, "traditional.acquisition.dose must be > 0, got 0"),
    ({"dose": float("nan")}, "tilt-series", {}, "traditional.acquisition.dose must be a number > 0, got nan"),
    ({"dos": 3}, "tilt-series", {}, "traditional.acquisition: unknown key(s) dos; expected star, tilt_range"),
    ({"dose": 30}, "tilt-series", {"dose": 40}, "traditional.acquisition.dose and traditional.options dose=40 both"),
])
def test_bad_acquisition_values_are_one_line_naming_the_key(acquisition, simulator, options, message):
    with pytest.raises(ConfigError) as info:
        traditional(acquisition, simulator, options)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_a_missing_star_is_one_line(tmp_path):
    with pytest.raises(InputError, match=r"traditional.acquisition.star .*nowhere.star: no such file"):
        traditional({"star": str(tmp_path / "nowhere.star")})


def test_a_gan_run_trained_on_another_domain_d_than_gan_input_is_one_line(tmp_path):
    """forge train --real trains on the traditional fourier simulation; an evaluation left at
    gan.input = "density" would feed that GAN clean maps without a word."""
    run = tmp_path / "runs" / "gan"
    run.mkdir(parents=True)
    (run / "config.toml").write_text('[data.density]\ndataset = "simulated"\n'
                                     '[data.density.options]\nsimulator = "fourier"\nbox = 16\n')
    with pytest.raises(ConfigError) as info:
        config_from_dict({"gan": {"run": str(run)}})
    assert str(info.value).startswith(f"gan.run {run} was trained on the traditional fourier simulation")
    assert str(info.value).endswith('but gan.input = \'density\'; set gan.input = "traditional"')
    assert config_from_dict({"gan": {"run": str(run), "input": "traditional"}}).gan.input == "traditional"
    (run / "config.toml").write_text('[data.density]\ndataset = "simulated"\n[data.density.options]\nsimulator = "posed-map"\n')
    with pytest.raises(ConfigError, match="was trained on clean posed maps .* set gan.input = \"density\""):
        config_from_dict({"gan": {"run": str(run), "input": "traditional"}})
