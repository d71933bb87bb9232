"""Loader throughput (batches/s, batch 32 x 192 frames) vs. the LSTM model's CPU training step rate.

    python benchmarks/dataloader.py [--batches 8] [--quick]

Labels are precomputed first (cached), as in training. The loader must deliver at least twice the
step rate of the model it feeds.
"""
import argparse
import copy
import os
import sys
import tempfile
import time

import numpy as np
import soundfile as sf
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from config_defaults import DEFAULTS  # noqa: E402
from f0_labels import precompute  # noqa: E402
from meldataset import MelDataset, build_dataloader  # noqa: E402
from synthetic import render_world_utterance  # noqa: E402
from train_step import steps_per_second  # noqa: E402


def write_clips(folder, count, seed=0):
    rng = np.random.default_rng(seed)
    world = copy.deepcopy(DEFAULTS["dataset_params"]["synthetic_data"]["world"])
    world["duration"] = [2.5, 3.0]  # at least one 192-frame crop each
    paths = []
    for i in range(count):
        audio, _ = render_world_utterance(rng, world)
        paths.append(os.path.join(folder, f"clip_{i:03d}.wav"))
        sf.write(paths[-1], audio, 24000)
    return paths


def batches_per_second(paths, params, workers, batches):
    loader = build_dataloader(MelDataset(paths, params, train=True), 32, workers, 0, "cpu", params["dataloader"])
    iterator = iter(loader)
    # Untimed: worker start-up (paid once per run) and the batches prefetched meanwhile.
    for _ in range(1 + 2 * workers):
        next(iterator)
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    return batches / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--quick", action="store_true", help="fewer clips and batches (CI smoke run)")
    args = parser.parse_args()
    if args.quick:
        args.batches = 3
    clips = 32 * (args.batches + 5)  # every timed batch is a full one, after up to 5 untimed
    torch.set_num_threads(1)  # the main process only collates; workers get a core each
    with tempfile.TemporaryDirectory() as folder:
        paths = write_clips(folder, clips)
        params = copy.deepcopy(DEFAULTS["dataset_params"])
        precompute(paths, params["f0_params"], workers=2)
        blended = copy.deepcopy(params)
        blended["synthetic_data"]["enabled"] = True
        rates = {}
        for name, p in (("cached labels", params), ("+ synthetic 20 %", blended)):
            for workers in (0, 2):
                rates[name, workers] = batches_per_second(paths, p, workers, args.batches)
                print(f"{name:18s} workers={workers}: {rates[name, workers]:6.2f} batches/s")
    torch.set_num_threads(2)
    step_rate = steps_per_second("lstm", batch=32, frames=192, steps=2 if args.quick else 4)
    print(f"lstm training step rate, batch 32 x 192, 2 threads: {step_rate:.2f} steps/s")
    worst = min(rates[name, 2] for name in ("cached labels", "+ synthetic 20 %"))
    print(f"loader (2 workers, worst case) / step rate = {worst / step_rate:.1f}x (target >= 2)")


if __name__ == "__main__":
    main()
