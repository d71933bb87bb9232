"""F0 precompute throughput, 1 vs 2 workers, on synthesised speech-like audio.

    python benchmarks/precompute.py [--config_path Configs/config.yml] [--seconds 72]

Each run labels the same clips into a fresh temporary cache (the config's f0_params, cache_dir
redirected), so both runs compute everything. Target on a 2-core machine: 2 workers >= 1.7x of 1.
"""

import os
import sys
import tempfile

import click
import numpy as np
import soundfile as sf
import yaml

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from audio import SAMPLE_RATE  # noqa: E402
from f0_labels import precompute  # noqa: E402


def syllable(rng):
    """A voiced stretch (harmonics under a moving F0, a vowel-like spectral tilt) then a noise consonant."""
    n = int(rng.uniform(0.12, 0.35) * SAMPLE_RATE)
    start, end = rng.uniform(90, 260, size=2)
    f0 = np.geomspace(start, end, n) * (1 + 0.02 * np.sin(2 * np.pi * 5 * np.arange(n) / SAMPLE_RATE))
    phase = 2 * np.pi * np.cumsum(f0) / SAMPLE_RATE
    voiced = sum(np.sin(k * phase) / k ** 1.5 for k in range(1, 12)) * np.hanning(n) ** 0.3
    consonant = 0.05 * rng.standard_normal(int(rng.uniform(0.03, 0.1) * SAMPLE_RATE))
    return np.concatenate([0.3 * voiced, consonant])


def utterance(seconds, rng):
    """Syllables separated by short pauses, cut to `seconds`, with a little background noise."""
    parts, length = [], 0
    while length < seconds * SAMPLE_RATE:
        parts += [syllable(rng), np.zeros(int(rng.uniform(0.0, 0.2) * SAMPLE_RATE))]
        length += parts[-2].size + parts[-1].size
    audio = np.concatenate(parts)[: int(seconds * SAMPLE_RATE)]
    return (audio + 1e-3 * rng.standard_normal(audio.size)).astype(np.float32)


def write_corpus(folder, total_seconds, clip_seconds=3.0, seed=0):
    rng = np.random.default_rng(seed)
    paths = []
    for index in range(int(np.ceil(total_seconds / clip_seconds))):
        path = os.path.join(folder, f"utt{index:03d}.wav")
        sf.write(path, utterance(clip_seconds, rng), SAMPLE_RATE)
        paths.append(path)
    return paths


def throughput(paths, f0_params, workers):
    with tempfile.TemporaryDirectory() as cache_dir:
        return precompute(paths, {**f0_params, "cache_dir": cache_dir}, workers)["audio_seconds_per_second"]


@click.command()
@click.option("--config_path", default="Configs/config.yml", show_default=True, type=click.Path(exists=True))
@click.option("--seconds", default=72.0, show_default=True, help="audio to label (at least 60 s)")
def main(config_path, seconds):
    with open(config_path, encoding="utf-8") as handle:
        f0_params = yaml.safe_load(handle)["dataset_params"]["f0_params"]
    with tempfile.TemporaryDirectory() as folder:
        paths = write_corpus(folder, seconds)
        rates = {workers: throughput(paths, f0_params, workers) for workers in (1, 2)}
    for workers, rate in rates.items():
        print(f"{workers} worker{'s' if workers > 1 else ''}: {rate:.2f} audio-seconds per second")
    print(f"speed-up 2 vs 1: {rates[2] / rates[1]:.2f}x (target >= 1.7x on 2 cores) on {seconds:.0f} s of audio")


if __name__ == "__main__":
    main()
