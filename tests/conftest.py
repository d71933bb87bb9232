"""Shared fixtures: a tiny on-disk corpus of harmonic tones with known pitch, and a tiny config."""
import os

import numpy as np
import pytest
import soundfile as sf
import yaml

from f0_helpers import harmonic_tone

SR = 24000


def glide_clip(f0_start, f0_end, seconds, rng, silence=0.2):
    """Silence, a tapered harmonic glide from f0_start to f0_end Hz, silence; 24 kHz float32."""
    n = int(seconds * SR)
    tone = harmonic_tone(np.geomspace(f0_start, f0_end, n), n_harmonics=5, amplitude=0.4) * np.hanning(n) ** 0.2
    pad = np.zeros(int(silence * SR))
    return (np.concatenate([pad, tone, pad]) + rng.normal(0, 1e-4, 2 * len(pad) + n)).astype(np.float32)


def tone_tracking(predictor, f0_hz):
    """A predictor's (median cents error, voiced share) inside a 1 s glide f0_hz -> 1.2 f0_hz (glide_clip,
    seed 1), a frame away from its edges, and its voiced share in the silence 2 frames or more outside it."""
    silence = 0.2  # seconds before and after the 1 s glide
    wave = glide_clip(f0_hz, f0_hz * 1.2, 1.0, np.random.default_rng(1), silence=silence)
    time, f0, voiced, _ = predictor.predict(wave, SR)
    sample = np.round(time * SR).astype(int) - int(silence * SR)
    inside = (sample >= 300) & (sample < SR - 300)
    outside = (sample < -600) | (sample >= SR + 600)
    truth = f0_hz * 1.2 ** (sample[inside] / SR)
    median_cents = float(np.median(1200 * np.abs(np.log2(f0[inside] / truth))))
    return median_cents, float(voiced[inside].mean()), float(voiced[outside].mean())


def write_corpus(folder, n_train=6, n_val=2, seconds=0.8, seed=0):
    """WAV files of random glides and the two list files; returns (train_list, val_list)."""
    rng = np.random.default_rng(seed)
    os.makedirs(folder, exist_ok=True)
    lists = {}
    for split, count in (("train", n_train), ("val", n_val)):
        lines = []
        for i in range(count):
            path = os.path.join(folder, f"{split}_{i}.wav")
            sf.write(path, glide_clip(*rng.uniform(100, 300, 2), seconds, rng), SR)
            lines.append(f"{path}|speaker0")
        lists[split] = os.path.join(folder, f"{split}_list.txt")
        with open(lists[split], "w") as f:
            f.write("\n".join(lines) + "\n")
    return lists["train"], lists["val"]


def tiny_config(tmp_path, **sections):
    """A config file for seconds-long CPU runs on the tiny corpus; `sections` update top-level keys."""
    train_list, val_list = write_corpus(str(tmp_path / "data"))
    config = {
        "log_dir": str(tmp_path / "run"), "device": "cpu", "epochs": 2, "batch_size": 2, "num_workers": 0,
        "save_freq": 1, "seed": 3, "train_data": train_list, "val_data": val_list,
        "loss_params": {"lambda_vuv_candidates": []},
        "optimizer_params": {"lr": 0.001},
        "training": {"plot_every": 1, "plot_clips": 2},
        "model_params": {"sequence_model": "lstm", "cnn_dropout": 0.0},
        "dataset_params": {"max_mel_length": 32},
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key] = {**config[key], **value}
        else:
            config[key] = value
    path = tmp_path / "config.yml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


@pytest.fixture
def corpus(tmp_path):
    return write_corpus(str(tmp_path / "corpus"))
