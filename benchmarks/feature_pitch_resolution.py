"""How much the hosts' mel features change when the pitch moves by 50 cents, from 50 to 800 Hz.

    python benchmarks/feature_pitch_resolution.py

The model sees only the host contract's normalised log-mels (features.mel_spectrogram: a 50 ms Hann window,
80 HTK mel bands). A window of 1,200 samples at 24 kHz has a main lobe 4 · 24000 / 1200 = 80 Hz wide, so below
about 80 Hz the harmonics are no longer resolved and the lowest bands stop following the pitch. This prints,
for steady harmonic tones (1/k harmonics up to 4 kHz), the mean absolute change of the log-mels, in the
model's input units, between F0 and F0 + 50 cents (one RPA tolerance): over the lowest 20 bands (0 to about
600 Hz, where resolved harmonics lie) and over all 80, each also as a share of its value at 150 Hz.
"""
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]
from audio import SAMPLE_RATE  # noqa: E402
from f0_helpers import harmonic_tone  # noqa: E402
from features import mel_spectrogram  # noqa: E402

TONES_HZ = (50, 55, 60, 65, 70, 80, 90, 100, 150, 250, 400, 600, 800)
REFERENCE_HZ = 150
EDGE_FRAMES = 10  # frames dropped at each end, where the tone's onset and the padding show


def steady_log_mel(f0_hz, seconds=1.0):
    """Mean normalised log-mel over the frames of a steady harmonic tone at f0_hz: (80,)."""
    n = int(seconds * SAMPLE_RATE)
    tone = harmonic_tone(np.full(n, float(f0_hz)), n_harmonics=max(1, int(4000 / f0_hz)), amplitude=0.3)
    return mel_spectrogram(tone.astype(np.float32)).numpy()[:, EDGE_FRAMES:-EDGE_FRAMES].mean(axis=1)


def change_for_50_cents(f0_hz):
    """(mean |Δ| over the lowest 20 bands, over all 80) between f0_hz and f0_hz + 50 cents."""
    delta = np.abs(steady_log_mel(f0_hz * 2 ** (50 / 1200)) - steady_log_mel(f0_hz))
    return float(delta[:20].mean()), float(delta.mean())


def main():
    changes = {f0: change_for_50_cents(f0) for f0 in TONES_HZ}
    low_ref, all_ref = changes[REFERENCE_HZ]
    print(f"{'F0 Hz':>6} {'lowest 20 bands':>16} {'share':>6} {'all 80 bands':>13} {'share':>6}")
    for f0, (low, everywhere) in changes.items():
        print(f"{f0:6d} {low:16.3f} {low / low_ref:6.2f} {everywhere:13.3f} {everywhere / all_ref:6.2f}")


if __name__ == "__main__":
    main()
