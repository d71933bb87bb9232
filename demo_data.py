"""The embedded demo corpus, generated on first use: no download, no third-party recordings.

WORLD-rendered speech-like utterances (synthetic.render_world_utterance) and, for each, a
pitch-shifted and a noisy variant, written as real 24 kHz WAV files with the two list files that
`Configs/demo.yml` trains on. Labels come later, through the normal F0 cascade and cache, exactly
as for a user's recordings. Train and validation utterances come from disjoint random streams.
"""
import json
import logging
import os

import numpy as np
import soundfile as sf

from audio import SAMPLE_RATE, write_atomically
from augment import add_noise
from synthetic import pitch_shift_clip, render_world_utterance

log = logging.getLogger("pitchextractor.demo_data")
NOISES = ("white", "pink", "babble")


def utterance_variants(rng, world_params, babble_clips):
    """(suffix, audio) for one rendered utterance: clean, pitch-shifted, and noisy (0-20 dB SNR)."""
    audio, f0 = render_world_utterance(rng, world_params)
    variants = [("clean", audio)]
    shifted = pitch_shift_clip(audio, f0, rng, {"semitones": [-5.0, 5.0], "gain_db_range": [-3.0, 3.0],
                                                   "min_voiced_fraction": 0.0})
    if shifted is not None:
        variants.append(("shift", shifted[0]))
    noise = NOISES[int(rng.integers(len(NOISES)))] if babble_clips else NOISES[int(rng.integers(2))]
    noisy = add_noise(audio, rng, float(rng.uniform(0.0, 20.0)), noise, babble_clips or None)
    variants.append((noise, noisy / max(1.0, float(np.abs(noisy).max()))))
    babble_clips.append(audio)  # earlier utterances of the same split are the babble talkers
    return variants


def write_split(folder, list_path, count, seed, world_params):
    rng = np.random.default_rng(seed)
    babble_clips, lines = [], []
    for i in range(count):
        for suffix, audio in utterance_variants(rng, world_params, babble_clips):
            path = os.path.join(folder, f"utt{i:04d}_{suffix}.wav")
            sf.write(path, audio.astype(np.float32), SAMPLE_RATE, subtype="PCM_16")
            lines.append(f"{os.path.abspath(path)}|demo")
    write_atomically(list_path, ("\n".join(lines) + "\n").encode())


def ensure_demo_corpus(demo_params, world_params, train_list, val_list):
    """Generate the demo corpus unless the same one is already there; returns the list paths."""
    folder = demo_params["folder"]
    marker = os.path.join(folder, "corpus.json")
    wanted = {"demo": demo_params, "world": world_params, "train_list": train_list, "val_list": val_list}
    if os.path.exists(marker) and all(map(os.path.exists, (train_list, val_list))):
        with open(marker) as f:
            if json.load(f) == wanted:
                return train_list, val_list
    log.info("generating the demo corpus in %s (first use only) ...", folder)
    for split, list_path, count, seed in (
            ("train", train_list, demo_params["train_utterances"], demo_params["seed"]),
            ("val", val_list, demo_params["val_utterances"], demo_params["seed"] + 1)):
        os.makedirs(os.path.join(folder, split), exist_ok=True)
        os.makedirs(os.path.dirname(os.path.abspath(list_path)), exist_ok=True)
        write_split(os.path.join(folder, split), list_path, count, seed, world_params)
    with open(marker, "w") as f:
        json.dump(wanted, f)
    return train_list, val_list
