"""Loader throughput, items/s at batch 32 x 192 frames: audio files vs. a pack, in the same run.

    python benchmarks/dataloader.py [--batches 8] [--quick]

The file loader decodes each item's whole file and reads its cached label; the packed loader slices one
memory-mapped array (pack.py). Both yield waveform crops (the mel is computed on the training device).
With 20 % synthetic data, the file loader renders WORLD utterances per item and the packed loader draws
them from a pre-rendered pool (synthetic_pool.py). Labels are precomputed first, as in training. Target
on 2 cores: packed / files >= 4 (cached labels), printed as `packed/files items/s ratio: X`.
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
from f0_labels import label_settings  # noqa: E402
from meldataset import MelDataset, build_dataloader  # noqa: E402
from pack import build_pack  # noqa: E402
from synthetic import render_world_utterance  # noqa: E402

BATCH = 32


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


def items_per_second(dataset, workers, batches):
    loader = build_dataloader(dataset, BATCH, workers, 0, "cpu", DEFAULTS["dataset_params"]["dataloader"])
    iterator = iter(loader)
    # Untimed: worker start-up (paid once per run) and the batches prefetched meanwhile.
    for _ in range(1 + 2 * workers):
        next(iterator)
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    return batches * BATCH / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--quick", action="store_true", help="fewer batches (CI smoke run)")
    args = parser.parse_args()
    if args.quick:
        args.batches = 4
    torch.set_num_threads(1)  # the main process only collates; workers get a core each
    with tempfile.TemporaryDirectory() as folder:
        paths = write_clips(folder, BATCH * (args.batches + 5))  # every timed batch a full one
        params = copy.deepcopy(DEFAULTS["dataset_params"])
        params["f0_params"]["pyworld"].update(algorithm="dio", d4c_threshold=0.0)  # labels fast: not timed here
        pack, _ = build_pack(paths, os.path.join(folder, "train.pack"), label_settings(params["f0_params"]))
        blended = copy.deepcopy(params)
        blended["synthetic_data"].update(enabled=True, pool_size=64)
        pool = MelDataset(pack, blended, train=True, pool_dir=os.path.join(folder, "pool"))
        start = time.perf_counter()
        pool.prepare_epoch(0)
        print(f"synthetic pool of 64 rendered in {time.perf_counter() - start:.1f} s (once per "
              f"pool_refresh_epochs epochs)")
        rates = {}
        for name, files, packed in (("cached labels", MelDataset(paths, params), MelDataset(pack, params)),
                                    ("+ synthetic 20 %", MelDataset(paths, blended), pool)):
            for loader, dataset in (("files", files), ("packed", packed)):
                rates[name, loader] = items_per_second(dataset, 2, args.batches)
                print(f"{name:18s} {loader:6s} loader, 2 workers: {rates[name, loader]:8.0f} items/s")
    print(f"+ synthetic 20 %: packed/files items/s ratio {rates['+ synthetic 20 %', 'packed'] / rates['+ synthetic 20 %', 'files']:.1f}")
    print(f"packed/files items/s ratio: {rates['cached labels', 'packed'] / rates['cached labels', 'files']:.1f}")


if __name__ == "__main__":
    main()
