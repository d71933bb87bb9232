"""Label-preserving augmentation: noise (white, pink, babble), reverb, band-limiting and gain.

None of these moves the pitch or the voicing, so an item's F0 label stays as it is. Every random choice
comes from the numpy Generator `rng` passed in, so the same item seed gives the same audio. Audio is
24 kHz mono float32; outputs keep the input's length.

  build_augmenter(aug_params, babble_source=None)   -> augment(audio, rng) -> audio
plus the single steps (add_noise, apply_reverb, band_limit, apply_gain).
"""
import contextlib
import random

import numpy as np
from scipy.signal import fftconvolve

from audio import SAMPLE_RATE


def uniform(rng, bounds):
    lo, hi = float(bounds[0]), float(bounds[1])
    return lo if hi <= lo else float(rng.uniform(lo, hi))


def db_to_amplitude(db):
    return 10.0 ** (db / 20.0)


def rms(x):
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) if len(x) else 0.0


def peak_limit(audio, limit=0.999):
    """Scale down (never up) so that |audio| <= limit: no clipping beyond [-1, 1]."""
    peak = float(np.max(np.abs(audio))) if len(audio) else 0.0
    return audio * (limit / peak) if peak > limit else audio


@contextlib.contextmanager
def _global_random_from(rng):
    """Seed Python's and numpy's global generators (used inside audiomentations) from rng, and
    restore their previous states afterwards, so the result depends on rng alone."""
    python_state, numpy_state = random.getstate(), np.random.get_state()
    seed = int(rng.integers(2**32))
    random.seed(seed)
    np.random.seed(seed)
    try:
        yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)


_NOISE_DECAY_DB_PER_OCTAVE = {"white": 0.0, "pink": -3.01}


def _babble(rng, n_samples, babble_source):
    """Unit-RMS sum of 2-4 clips from babble_source (a list of arrays or a callable(rng) -> array),
    each looped or cropped to n_samples at a random offset."""
    mix = np.zeros(n_samples)
    for _ in range(int(rng.integers(2, 5))):
        if callable(babble_source):
            clip = np.asarray(babble_source(rng), dtype=np.float64).reshape(-1)
        else:
            clip = np.asarray(babble_source[int(rng.integers(len(babble_source)))], dtype=np.float64).reshape(-1)
        if len(clip) == 0 or rms(clip) == 0.0:
            continue
        start = int(rng.integers(len(clip)))
        clip = np.resize(np.roll(clip, -start), n_samples)  # loops short clips
        mix += clip / rms(clip)
    level = rms(mix)
    return mix / level if level > 0 else mix


def add_noise(audio, rng, snr_db, color="white", babble_source=None):
    """Add white, pink (audiomentations AddColorNoise) or babble noise at `snr_db` dB relative to
    the RMS of the whole clip. Same length and float32; not yet peak-limited."""
    audio = np.asarray(audio, dtype=np.float32)
    if color == "babble":
        if babble_source is None:
            raise ValueError("babble noise needs a babble_source (clips or callable(rng) -> clip)")
        noise = _babble(rng, len(audio), babble_source)
        return (audio + noise * (rms(audio) / db_to_amplitude(snr_db))).astype(np.float32)
    from audiomentations import AddColorNoise

    decay = _NOISE_DECAY_DB_PER_OCTAVE[color]
    transform = AddColorNoise(min_snr_db=snr_db, max_snr_db=snr_db, min_f_decay=decay,
                              max_f_decay=decay, p=1.0)
    with _global_random_from(rng):
        return transform(audio, SAMPLE_RATE).astype(np.float32)


def synthetic_rir(rng, rt60, drr_db):
    """Room impulse response: direct path at sample 0, sparse early reflections and an
    exponentially decaying (60 dB over rt60 s) noise tail with direct-to-reverberant ratio drr_db."""
    n = max(int(rt60 * SAMPLE_RATE), 64)
    t = np.arange(n) / SAMPLE_RATE
    tail = rng.standard_normal(n) * np.exp(-6.908 * t / rt60)
    tail[: int(rng.uniform(0.002, 0.008) * SAMPLE_RATE)] = 0.0  # pre-delay before the diffuse tail
    early = rng.integers(int(0.001 * SAMPLE_RATE), int(0.03 * SAMPLE_RATE), size=6)
    tail[np.minimum(early, n - 1)] += rng.uniform(-1.0, 1.0, 6) * 3.0 * np.exp(-6.908 * early / SAMPLE_RATE / rt60)
    tail[0] = 0.0
    tail *= np.sqrt(10.0 ** (-drr_db / 10.0) / max(np.sum(tail**2), 1e-12))
    tail[0] = 1.0
    return tail


def apply_reverb(audio, rng, rt60_range=(0.1, 0.5), drr_db_range=(0.0, 15.0)):
    """Convolve with a synthetic RIR (direct path at 0, so no delay); same length and RMS."""
    rir = synthetic_rir(rng, uniform(rng, rt60_range), uniform(rng, drr_db_range))
    wet = fftconvolve(np.asarray(audio, dtype=np.float64), rir)[: len(audio)]
    rms_in, rms_out = rms(audio), rms(wet)
    return (wet * (rms_in / rms_out if rms_out > 0 else 1.0)).astype(np.float32)


def band_limit(audio, rng, lowpass_hz=(3000.0, 11000.0), highpass_hz=(40.0, 200.0)):
    """Random zero-phase (no delay) low-pass, high-pass or both (audiomentations filters), with
    cutoffs uniform in the given ranges (Hz); a range of None leaves that filter out."""
    from audiomentations import HighPassFilter, LowPassFilter

    audio = np.asarray(audio, dtype=np.float32)
    if len(audio) < 64:  # too short for the filters' edge padding
        return audio
    choices = [(low, high) for low, high in ((True, False), (False, True), (True, True))
               if (lowpass_hz is not None or not low) and (highpass_hz is not None or not high)]
    low, high = choices[int(rng.integers(len(choices)))]
    transforms = []
    if low:
        cutoff, rolloff = uniform(rng, lowpass_hz), int(rng.choice([12, 24]))
        transforms.append(LowPassFilter(min_cutoff_freq=cutoff, max_cutoff_freq=cutoff, min_rolloff=rolloff,
                                        max_rolloff=rolloff, zero_phase=True, p=1.0))
    if high:
        cutoff, rolloff = uniform(rng, highpass_hz), int(rng.choice([12, 24]))
        transforms.append(HighPassFilter(min_cutoff_freq=cutoff, max_cutoff_freq=cutoff, min_rolloff=rolloff,
                                         max_rolloff=rolloff, zero_phase=True, p=1.0))
    with _global_random_from(rng):
        for transform in transforms:
            audio = transform(audio, SAMPLE_RATE)
    return audio.astype(np.float32)


def apply_gain(audio, rng, gain_db_range):
    """Random gain in dB (audiomentations Gain)."""
    from audiomentations import Gain

    gain = uniform(rng, gain_db_range)
    with _global_random_from(rng):
        return Gain(min_gain_db=gain, max_gain_db=gain, p=1.0)(np.asarray(audio, dtype=np.float32), SAMPLE_RATE)


class Augmenter:
    """augment(audio, rng) -> audio: reverb, noise, band-limiting, gain, each applied with
    probability `probability`, then scaled down if it would clip. Picklable (DataLoader workers)."""

    def __init__(self, aug_params, babble_source=None):
        self.params = dict(aug_params)
        self.babble_source = babble_source
        unknown = set(self.params["noise_types"]) - {"white", "pink", "babble"}
        if unknown:
            raise ValueError(f"augmentation.noise_types: unknown {sorted(unknown)}; use white, pink, babble")
        self.noise_types = [kind for kind in self.params["noise_types"] if kind != "babble" or babble_source is not None]

    def __call__(self, audio, rng):
        params = self.params
        audio = np.asarray(audio, dtype=np.float32)
        if not params["enabled"] or len(audio) == 0:
            return audio
        p = float(params["probability"])
        if params["reverb"] and rng.random() < p:
            audio = apply_reverb(audio, rng, params["reverb_rt60"])
        if self.noise_types and params["snr_db_range"] is not None and rng.random() < p:
            color = self.noise_types[int(rng.integers(len(self.noise_types)))]
            audio = add_noise(audio, rng, uniform(rng, params["snr_db_range"]), color, self.babble_source)
        if params["band_limit"] and rng.random() < p:
            audio = band_limit(audio, rng, params["lowpass_hz"], params["highpass_hz"])
        if params["gain_db_range"] is not None and rng.random() < p:
            audio = apply_gain(audio, rng, params["gain_db_range"])
        return peak_limit(audio).astype(np.float32)


def build_augmenter(aug_params, babble_source=None):
    """The augmentation callable `augment(audio, rng) -> audio` for the `augmentation` config block.

    babble_source: clips for babble noise, a list of 24 kHz arrays or a callable(rng) -> array
    (picklable if used in DataLoader workers); without it babble is left out of the noise types.
    Output: float32, same length, within [-1, 1]. With `enabled: false` audio is returned as is.
    """
    return Augmenter(aug_params, babble_source)
