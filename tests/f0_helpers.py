"""Synthetic audio with known F0 and the measures the F0 tests assert on."""

import copy
import pathlib

import numpy as np
import soundfile as sf
import yaml

from audio import HOP_LENGTH, SAMPLE_RATE, num_frames


def harmonic_tone(f0_per_sample, n_harmonics=6, amplitude=0.5):
    """A vowel-like tone: harmonics at 1/k amplitude following an F0 given per sample (Hz)."""
    phase = 2 * np.pi * np.cumsum(f0_per_sample) / SAMPLE_RATE
    tone = sum(np.sin(k * phase) / k for k in range(1, n_harmonics + 1))
    return amplitude * tone / np.abs(tone).max()


def up_down_glide(low=120.0, high=240.0, ramp_seconds=1.2, silence_seconds=0.3, noise=1e-4, seed=0):
    """Silence, an exponential glide low->high->low, silence; returns (audio float32, true F0 on the model grid).

    Rising then falling at the same rate lets a test separate a time lag (opposite sign on the two
    ramps) from a pitch bias (same sign).
    """
    ramp = np.arange(int(ramp_seconds * SAMPLE_RATE)) / SAMPLE_RATE
    rising = low * (high / low) ** (ramp / ramp_seconds)
    f0_voiced = np.concatenate([rising, rising[::-1]])
    silence = np.zeros(int(silence_seconds * SAMPLE_RATE))
    audio = np.concatenate([silence, harmonic_tone(f0_voiced), silence])
    audio += noise * np.random.default_rng(seed).standard_normal(audio.size)
    # One extra unvoiced sample: the last frame is centred at sample N when N is a multiple of the hop.
    f0_per_sample = np.concatenate([silence, f0_voiced, silence, [0.0]])
    true_f0 = f0_per_sample[np.arange(num_frames(audio.size)) * HOP_LENGTH].astype(np.float32)
    return audio.astype(np.float32), true_f0


def cents(estimate, truth):
    return 1200 * np.log2(estimate / truth)


def glide_errors(estimate, truth, guard_frames=4):
    """(median |cents| on frames voiced in both, lag of the estimate in frames, positive = late).

    Frames within guard_frames of a voicing edge or of the apex are left out of the lag estimate.
    """
    both = (estimate > 0) & (truth > 0)
    median_abs_cents = float(np.median(np.abs(cents(estimate[both], truth[both]))))
    voiced = np.flatnonzero(truth > 0)
    apex = voiced[np.argmax(truth[voiced])]
    frames = np.arange(truth.size)
    rising = both & (frames >= voiced[0] + guard_frames) & (frames <= apex - guard_frames)
    falling = both & (frames >= apex + guard_frames) & (frames <= voiced[-1] - guard_frames)
    slope = np.median(cents(truth[rising][1:], truth[rising][:-1]))  # cents per frame on the ramps
    bias_minus_lag = np.median(cents(estimate[rising], truth[rising]))
    bias_plus_lag = np.median(cents(estimate[falling], truth[falling]))
    return median_abs_cents, float((bias_plus_lag - bias_minus_lag) / (2 * slope))


def voicing_edges(f0):
    voiced = np.flatnonzero(f0 > 0)
    return int(voiced[0]), int(voiced[-1])


def write_audio(path, audio, sample_rate=SAMPLE_RATE, **kwargs):
    sf.write(str(path), audio, sample_rate, **kwargs)
    return str(path)


def default_f0_params():
    """dataset_params.f0_params from the repo config, so the tests exercise the keys users actually set."""
    config_path = pathlib.Path(__file__).resolve().parent.parent / "Configs" / "config.yml"
    with open(config_path, encoding="utf-8") as handle:
        return copy.deepcopy(yaml.safe_load(handle)["dataset_params"]["f0_params"])


def only_backends(f0_params, *names):
    """f0_params in cascade mode with exactly `names` enabled, in that cascade order."""
    f0_params["mode"] = "cascade"
    f0_params["backend_order"] = list(names) + [name for name in f0_params["backend_order"] if name not in names]
    for name in f0_params["backend_order"]:
        f0_params[name]["enabled"] = name in names
    return f0_params
