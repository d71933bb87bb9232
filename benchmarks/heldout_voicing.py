"""V/UV F1 of checkpoints on real held-out speech, clean and in noise: what the evaluation corpus cannot show.

    python benchmarks/heldout_voicing.py CKPT [CKPT ...] [--list Data/speech/val_small_list.txt] [--every 4]
                                         [-p Configs/pretrain.yml]

The evaluation corpus is resynthesised from harvest contours, so its voicing reference is harvest's (its
README warns that harvest-like trackers have a home advantage there). Real recordings have no exact
reference; this scores voicing against the consensus labels (the config's f0_params, read from the label
cache or computed) on the frames they are certain of, for every `--every`-th clip of the list (by default
the held-out speakers of Data/prepare_speech.py), clean, with pink noise at 10 dB and with babble of the
other listed clips at 5 dB. Per checkpoint and condition: F1 at its stored threshold, and the best F1 over
thresholds 0.02..0.98 and the stored one (metrics.calibrate_vuv_threshold, as the trainer calibrates; a
diagnostic of calibration, not a setting). The trackers the consensus is made of
(pyworld, torchcrepe, swiftf0, praat) would be scored against themselves, so they are not listed.
"""
import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from audio import SAMPLE_RATE, load_audio, read_file_list  # noqa: E402
from augment import add_noise, peak_limit  # noqa: E402
from config import load_config  # noqa: E402
from f0_labels import cached_f0, label_settings  # noqa: E402
from infer import load_predictor  # noqa: E402
from metrics import calibrate_vuv_threshold  # noqa: E402

CONDITIONS = {"clean": None, "pink10": ("pink", 10.0), "babble5": ("babble", 5.0)}
THRESHOLD_STEPS = 49  # candidates 0.02, 0.04, ..., 0.98 (and the stored threshold)


def condition_audio(waves, index, noise):
    """Clip `index` clean (noise None) or with (color, snr_db) noise; babble comes from the other clips."""
    if noise is None:
        return waves[index]
    color, snr_db = noise
    others = [wave for j, wave in enumerate(waves) if j != index]
    return peak_limit(add_noise(waves[index], np.random.default_rng(index), snr_db, color, babble_source=others))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="+")
    parser.add_argument("--list", default="Data/speech/val_small_list.txt")
    parser.add_argument("--every", type=int, default=4)
    parser.add_argument("-p", "--config", default="Configs/pretrain.yml")
    args = parser.parse_args()
    settings = label_settings(load_config(args.config)["dataset_params"]["f0_params"])
    paths = read_file_list(args.list)[:: args.every]
    waves = [load_audio(path) for path in paths]
    labels = [cached_f0(path, settings) for path in paths]
    certain = sum(int(np.sum(~np.isnan(label))) for label in labels)
    print(f"{len(paths)} clips of {args.list}, {certain} frames with a certain consensus label")
    print(f"{'checkpoint':40s} {'condition':9s} {'threshold':>9s} {'F1':>6s} {'best F1':>8s}")
    for checkpoint in args.checkpoints:
        predictor = load_predictor(checkpoint, device="cpu")
        for name, noise in CONDITIONS.items():
            refs, probs = [], []
            for index, label in enumerate(labels):
                _, _, _, prob = predictor.predict(condition_audio(waves, index, noise), SAMPLE_RATE)
                frames = min(len(prob), len(label))
                keep = ~np.isnan(label[:frames])
                refs.append(label[:frames][keep] > 0)
                probs.append(np.asarray(prob)[:frames][keep])
            ref, prob = np.concatenate(refs), np.concatenate(probs)
            _, stored_f1 = calibrate_vuv_threshold(prob, ref, 0, initial=predictor.vuv_threshold)
            best_threshold, best_f1 = calibrate_vuv_threshold(prob, ref, THRESHOLD_STEPS,
                                                              initial=predictor.vuv_threshold)
            print(f"{checkpoint[-40:]:40s} {name:9s} {predictor.vuv_threshold:9.2f} "
                  f"{stored_f1:6.1f} {best_f1:5.1f}@{best_threshold:.2f}", flush=True)


if __name__ == "__main__":
    main()
