"""augment.py: noise at the asked SNR, reverb and filters without delay, reproducible per item seed, no
clipping (real audiomentations / scipy on WORLD renders)."""
import random

import numpy as np
import pytest
import scipy.signal

import augment as aug
import synthetic
from test_synthetic import WORLD

SR = 24000


@pytest.fixture(scope="module")
def renders():
    return [synthetic.render_world_utterance(np.random.default_rng(seed), WORLD) for seed in range(4)]


@pytest.fixture(scope="module")
def clean(renders):
    return renders[0][0]


def noise_only(snr, types):
    return {"enabled": True, "probability": 1.0, "snr_db_range": [snr, snr], "noise_types": types,
            "gain_db_range": [0.0, 0.0], "reverb": False, "band_limit": False}


@pytest.mark.parametrize("color", ["white", "pink", "babble"])
def test_noise_reaches_requested_snr(clean, renders, color):
    babble = [r[0] for r in renders[1:]]
    augment = aug.build_augmenter(noise_only(10.0, [color]), babble_source=babble)
    x = clean * 0.5  # headroom: no peak limiting in this measurement
    out = augment(x, np.random.default_rng(1))
    assert out.dtype == np.float32 and len(out) == len(x)
    noise = out.astype(np.float64) - x
    snr = 10 * np.log10(np.mean(x.astype(np.float64) ** 2) / np.mean(noise**2))
    assert abs(snr - 10.0) < 1.0, snr
    if color == "pink":  # pink has more low-frequency than high-frequency power per Hz
        f, psd = scipy.signal.welch(noise, fs=SR, nperseg=2048)
        assert psd[(f > 200) & (f < 800)].mean() > 4 * psd[(f > 4000) & (f < 10000)].mean()


def test_babble_needs_a_source(clean):
    augment = aug.build_augmenter(noise_only(10.0, ["babble"]))  # no clips: babble left out
    assert np.array_equal(augment(clean, np.random.default_rng(0)), clean)
    clips_from_callable = aug.build_augmenter(noise_only(10.0, ["babble"]),
                                                    babble_source=lambda rng: np.sin(np.arange(5000) * 0.1))
    assert not np.array_equal(clips_from_callable(clean, np.random.default_rng(0)), clean)


FULL = {"enabled": True, "probability": 1.0, "snr_db_range": [0.0, 30.0], "noise_types": ["white", "pink"],
        "gain_db_range": [-12.0, 6.0], "reverb": True, "reverb_rt60": [0.1, 0.5], "band_limit": True,
        "lowpass_hz": [3000.0, 11000.0], "highpass_hz": [40.0, 200.0]}


def test_augment_is_reproducible_and_changes_the_signal(clean):
    augment = aug.build_augmenter(FULL)
    random.seed(99)
    np.random.seed(99)
    expected_python, expected_numpy = random.random(), np.random.random()
    random.seed(99)
    np.random.seed(99)
    a = augment(clean, np.random.default_rng(5))
    # the global generators audiomentations uses are left as they were
    assert random.random() == expected_python and np.random.random() == expected_numpy
    b = augment(clean, np.random.default_rng(5))
    c = augment(clean, np.random.default_rng(6))
    assert a.dtype == np.float32 and len(a) == len(clean)
    assert np.array_equal(a, b)
    assert not np.allclose(a, c)
    assert not np.allclose(a, clean)


def test_augment_never_clips():
    loud = (0.99 * np.sign(np.sin(2 * np.pi * 150 * np.arange(SR) / SR))).astype(np.float32)
    augment = aug.build_augmenter(dict(FULL, gain_db_range=[6.0, 6.0], snr_db_range=[0.0, 0.0]))
    for seed in range(5):
        out = augment(loud, np.random.default_rng(seed))
        assert np.abs(out).max() <= 1.0 and len(out) == len(loud)


def test_augment_disabled_or_improbable_is_identity(clean):
    for params in (dict(FULL, enabled=False), dict(FULL, probability=0.0)):
        assert np.array_equal(aug.build_augmenter(params)(clean, np.random.default_rng(0)), clean)


def test_reverb_and_filters_keep_time_alignment(clean):
    rng = np.random.default_rng(3)
    for transform in (lambda x: aug.apply_reverb(x, rng, (0.3, 0.3)),
                      lambda x: aug.band_limit(x, rng, (4000.0, 4000.0), (150.0, 150.0))):
        out = transform(clean)
        assert out.dtype == np.float32 and len(out) == len(clean)
        assert not np.allclose(out, clean)
        corr = scipy.signal.correlate(out, clean, mode="full", method="fft")
        lag = int(np.argmax(corr)) - (len(clean) - 1)
        assert abs(lag) <= 2, lag  # no delay: labels stay on their frames


def test_band_limit_filters_what_it_says(clean):
    f, before = scipy.signal.welch(clean, fs=SR, nperseg=4096)
    _, lowpassed = scipy.signal.welch(aug.band_limit(clean, np.random.default_rng(0), (3000.0, 3000.0), None),
                                      fs=SR, nperseg=4096)
    _, highpassed = scipy.signal.welch(aug.band_limit(clean, np.random.default_rng(0), None, (400.0, 400.0)),
                                       fs=SR, nperseg=4096)
    high, low, mid = f > 6000, f < 150, (f > 1000) & (f < 2000)
    assert lowpassed[high].sum() < 0.02 * before[high].sum()
    assert lowpassed[mid].sum() > 0.5 * before[mid].sum()
    assert highpassed[low].sum() < 0.1 * before[low].sum()
    assert highpassed[mid].sum() > 0.5 * before[mid].sum()
