"""augment.py: the batched augmentation (run here on the CPU, the same code as on a GPU) adds noise at the asked
SNR, reverb and filters without delay, never clips, and depends on the item seed alone, not on the batch;
the numpy add_noise of the demo corpus reaches its SNR (WORLD renders, scipy for the measurements)."""
import numpy as np
import pytest
import scipy.signal
import torch

import augment as aug
import synthetic
from test_synthetic import WORLD

SR = 24000
FULL = {"enabled": True, "probability": 1.0, "snr_db_range": [0.0, 30.0], "noise_types": ["white", "pink", "babble"],
        "gain_db_range": [-12.0, 6.0], "reverb": True, "reverb_rt60": [0.1, 0.5], "band_limit": True,
        "lowpass_hz": [3000.0, 11000.0], "highpass_hz": [40.0, 200.0], "noise_bank_seconds": 4.0}
ONLY_NOISE = dict(FULL, reverb=False, band_limit=False, gain_db_range=None)


@pytest.fixture(scope="module")
def renders():
    return [synthetic.render_world_utterance(np.random.default_rng(seed), WORLD)[0] for seed in range(4)]


@pytest.fixture(scope="module")
def bank(renders):
    return aug.noise_bank(4.0, seed=0, babble_clips=renders[1:])


def augment(params, bank, clips, seeds):
    """Run one batch of clips (zero-padded to the longest) -> list of the augmented clips, unpadded."""
    length = max(len(c) for c in clips)
    waves = torch.zeros(len(clips), length)
    for row, clip in enumerate(clips):
        waves[row, : len(clip)] = torch.as_tensor(clip)
    lengths = torch.tensor([len(c) for c in clips])
    out = aug.Augmenter(params, bank, "cpu")(waves, torch.tensor(seeds, dtype=torch.int64), lengths)
    assert out.shape == waves.shape and out.dtype == torch.float32
    for row, clip in enumerate(clips):
        assert (out[row, len(clip):] == 0).all()  # batch padding stays silent
    return [out[row, : len(clip)].numpy() for row, clip in enumerate(clips)]


def snr_db(clean, noisy):
    noise = noisy.astype(np.float64) - clean
    return 10 * np.log10(np.mean(clean.astype(np.float64) ** 2) / np.mean(noise**2))


@pytest.mark.parametrize("color", ["white", "pink", "babble"])
def test_noise_reaches_requested_snr(renders, bank, color):
    x = renders[0] * 0.3  # headroom: no peak limiting in this measurement
    params = dict(ONLY_NOISE, snr_db_range=[10.0, 10.0], noise_types=[color])
    out = augment(params, bank, [x, x[:30000]], [1, 2])
    for clean, noisy in zip((x, x[:30000]), out):
        assert abs(snr_db(clean, noisy) - 10.0) < 0.2  # relative to each item's own RMS
    if color != "babble":  # white is flat; pink has more low- than high-frequency power per Hz
        f, psd = scipy.signal.welch(out[0] - x, fs=SR, nperseg=2048)
        ratio = psd[(f > 200) & (f < 800)].mean() / psd[(f > 4000) & (f < 10000)].mean()
        assert (ratio > 4) if color == "pink" else (0.7 < ratio < 1.4), ratio
    else:  # babble is speech: most of its power below 1 kHz, unlike white noise
        f, psd = scipy.signal.welch(out[0] - x, fs=SR, nperseg=2048)
        assert psd[f < 1000].sum() > 0.5 * psd.sum()


def test_the_same_item_seed_gives_the_same_audio_in_any_batch(renders, bank):
    a, b, c, d = (r[:40000] for r in renders)
    first = augment(FULL, bank, [a, b], [5, 6])
    second = augment(FULL, bank, [c, a[:35000], a, d[:20000]], [9, 5, 5, 7])
    assert np.allclose(first[0], second[2], atol=1e-5, rtol=0)  # same seed, other batch, other row
    again = augment(FULL, bank, [a, a], [5, 6])
    assert np.allclose(first[0], again[0], atol=1e-5, rtol=0) and not np.allclose(again[0], again[1], atol=1e-3)
    assert not np.allclose(first[0], a, atol=1e-3)


def test_augment_never_clips(bank):
    loud = (0.99 * np.sign(np.sin(2 * np.pi * 150 * np.arange(SR) / SR))).astype(np.float32)
    out = augment(dict(FULL, gain_db_range=[6.0, 6.0], snr_db_range=[0.0, 0.0]), bank, [loud] * 5, list(range(5)))
    assert all(np.abs(o).max() <= 1.0 for o in out)


def test_disabled_or_improbable_is_identity(renders, bank):
    assert aug.build_augmenter(dict(FULL, enabled=False), [], 0, "cpu") is None
    x = renders[0]
    assert np.array_equal(augment(dict(FULL, probability=0.0), bank, [x], [3])[0], x)
    no_babble = aug.noise_bank(1.0, seed=0)  # no clips: babble is left out of the noise types
    assert np.array_equal(augment(dict(ONLY_NOISE, noise_types=["babble"]), no_babble, [x], [3])[0], x)


def lag(out, clean):
    corr = scipy.signal.correlate(out, clean, mode="full", method="fft")
    return int(np.argmax(corr)) - (len(clean) - 1)


def test_reverb_and_filters_keep_time_alignment_and_level(renders, bank):
    x = renders[0]
    only_reverb = dict(FULL, noise_types=[], band_limit=False, gain_db_range=None, reverb_rt60=[0.3, 0.3])
    only_band = dict(FULL, noise_types=[], reverb=False, gain_db_range=None, lowpass_hz=[4000.0, 4000.0],
                     highpass_hz=[150.0, 150.0])
    for params in (only_reverb, only_band):
        out = augment(params, bank, [x], [4])[0]
        assert not np.allclose(out, x, atol=1e-3)
        assert abs(lag(out, x)) <= 2  # no delay: labels stay on their frames
    reverberant = augment(only_reverb, bank, [x], [4])[0]
    assert abs(np.sqrt(np.mean(reverberant**2)) / np.sqrt(np.mean(x**2)) - 1) < 0.01


def test_band_limit_filters_what_it_says(renders, bank):
    x = renders[0]
    f, before = scipy.signal.welch(x, fs=SR, nperseg=4096)
    base = dict(FULL, noise_types=[], reverb=False, gain_db_range=None)
    low = augment(dict(base, lowpass_hz=[3000.0, 3000.0], highpass_hz=None), bank, [x], [0])[0]
    high = augment(dict(base, lowpass_hz=None, highpass_hz=[400.0, 400.0]), bank, [x], [0])[0]
    _, lowpassed = scipy.signal.welch(low, fs=SR, nperseg=4096)
    _, highpassed = scipy.signal.welch(high, fs=SR, nperseg=4096)
    above, below, mid = f > 6000, f < 150, (f > 1000) & (f < 2000)
    assert lowpassed[above].sum() < 0.02 * before[above].sum()
    assert lowpassed[mid].sum() > 0.5 * before[mid].sum()
    assert highpassed[below].sum() < 0.1 * before[below].sum()
    assert highpassed[mid].sum() > 0.5 * before[mid].sum()


@pytest.mark.parametrize("color", ["white", "pink", "babble"])
def test_clip_add_noise_of_the_demo_corpus_reaches_requested_snr(renders, color):
    x = renders[0] * 0.5
    out = aug.add_noise(x, np.random.default_rng(1), 10.0, color, babble_source=renders[1:])
    assert out.dtype == np.float32 and len(out) == len(x)
    assert abs(snr_db(x, out) - 10.0) < 1.0
