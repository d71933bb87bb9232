"""infer.py over a folder on one CPU thread, next to the bare forward on the same clips, in the same run.

    python benchmarks/infer_speed.py [--folder Data/range_set/wav] [--runs 3]

Each run is a fresh `OMP_NUM_THREADS=1 python infer.py FOLDER --out TMP`, whose printed `x real time`
figure (model load excluded) is listed, then, in this process (with the command's allocator setting),
infer.py's pipeline (run_inference) and the bare forward of the model it runs on one thread
(model.winograd_model where NNPACK is available), batch 1, on each clip's exact frames, without mels,
decoding, padding or output files, back to back so that both see the same machine load. Without --folder,
40 WORLD-rendered clips of 1-8 s are written to a temporary folder.
Targets: the command >= 15x, the pipeline >= 90 % of the bare rate.
"""
import argparse
import copy
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import soundfile as sf
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from audio import SAMPLE_RATE, load_audio, num_frames  # noqa: E402
from config_defaults import DEFAULTS  # noqa: E402
from infer import (DEFAULT_CHECKPOINT, Predictor, audio_files_under, keep_freed_memory_for_reuse,  # noqa: E402
                   load_model, run_inference)
from synthetic import render_world_utterance  # noqa: E402


def write_clips(folder, count=40, seed=0):
    rng = np.random.default_rng(seed)
    world = copy.deepcopy(DEFAULTS["dataset_params"]["synthetic_data"]["world"])
    for i in range(count):
        world["duration"] = [1.0 + 7.0 * i / (count - 1)] * 2
        audio, _ = render_world_utterance(rng, world)
        sf.write(os.path.join(folder, f"clip_{i:03d}.wav"), audio, 24000)


def command_rate(folder, out):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, os.path.join(ROOT, "infer.py"), folder, "--out", out],
                            capture_output=True, text=True, env=env, check=True)
    return float(re.search(r"\(([\d.]+)x real time\)", result.stdout).group(1))


def pipeline_and_bare_rates(predictor, paths, out):
    """Audio seconds per second of infer.py's pipeline (run_inference: decoding, mels, padding, files) and of
    the bare forward on every clip's exact frames (batch 1), measured back to back in this process."""
    start = time.perf_counter()
    _, seconds = run_inference(predictor, paths, out)
    pipeline = seconds / (time.perf_counter() - start)
    inputs = [torch.randn(1, 1, 80, num_frames(len(load_audio(path)))).contiguous(
        memory_format=predictor.memory_format) for path in paths]
    with torch.inference_mode():
        start = time.perf_counter()
        for x in inputs:
            predictor.model(x)
        bare = seconds / (time.perf_counter() - start)
    return pipeline, bare


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--folder", help="audio clips [default: 40 rendered clips of 1-8 s]")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    keep_freed_memory_for_reuse()  # as the command does
    predictor = Predictor(*load_model(DEFAULT_CHECKPOINT))  # the model and layout infer.py runs on one thread
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.folder
        if folder is None:
            folder = os.path.join(tmp, "clips")
            os.makedirs(folder)
            write_clips(folder)
        paths, out = audio_files_under(folder), os.path.join(tmp, "out")
        pipeline_and_bare_rates(predictor, paths[:2], out)  # warm-up: the first calls allocate
        commands, pairs = [], []
        for _ in range(args.runs):
            commands.append(command_rate(folder, out))
            pairs.append(pipeline_and_bare_rates(predictor, paths, out))
        seconds = sum(len(load_audio(path)) for path in paths) / SAMPLE_RATE
    ratios = [100 * pipeline / bare for pipeline, bare in pairs]
    print(f"{len(paths)} clips, {seconds:.1f} s of audio, one thread, "
          f"NNPACK Winograd model {'on' if torch._nnpack_available() else 'off (oneDNN, channels-last)'}")
    print(f"infer.py command: {', '.join(f'{r:.1f}x' for r in commands)} real time "
          f"(median {statistics.median(commands):.1f}x; target >= 15x)")
    print(f"in-process pipeline / bare forward: " + ", ".join(
        f"{p:.1f}x / {b:.1f}x = {r:.0f} %" for (p, b), r in zip(pairs, ratios))
          + f" (median {statistics.median(ratios):.0f} %; target >= 90 %)")


if __name__ == "__main__":
    main()
