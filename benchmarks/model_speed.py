"""Parameter counts and one-thread CPU forward time on 10 s of audio, Transformer vs. LSTM.

    python benchmarks/model_speed.py [--seconds 10] [--repeats 5]

Also the LSTM as infer.py runs it on CPU: on channels-last input (oneDNN), and on one thread where NNPACK
is available, as model.winograd_model (Winograd 3x3 convolutions, BatchNorm folded).
"""
import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from model import build_model, winograd_model  # noqa: E402


def forward_seconds(model, frames, repeats, memory_format=torch.contiguous_format):
    x = torch.randn(1, 1, 80, frames).contiguous(memory_format=memory_format)
    model = model.to(memory_format=memory_format)
    with torch.inference_mode():
        model(x)  # warm-up: first call allocates
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - start)
    return min(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    frames = 1 + int(args.seconds * 24000) // 300
    results = {}
    for kind in ("lstm", "transformer"):
        model = build_model({"sequence_model": kind}).eval()
        params = sum(p.numel() for p in model.parameters())
        results[kind] = forward_seconds(model, frames, args.repeats)
        print(f"{kind:12s} params {params:>10,d}  forward {args.seconds:g} s audio ({frames} frames): "
              f"{results[kind] * 1000:7.1f} ms  ({args.seconds / results[kind]:.0f}x real time, 1 thread)")
    lstm = build_model({"sequence_model": "lstm"}).eval()
    seconds = forward_seconds(lstm, frames, args.repeats, torch.channels_last)
    print(f"lstm, channels-last (infer.py on CPU, 2+ threads): {seconds * 1000:7.1f} ms  "
          f"({args.seconds / seconds:.0f}x real time, 1 thread)")
    if torch._nnpack_available():
        seconds = forward_seconds(winograd_model(lstm), frames, args.repeats)
        print(f"lstm, winograd_model (infer.py on CPU, 1 thread): {seconds * 1000:7.1f} ms  "
              f"({args.seconds / seconds:.0f}x real time, 1 thread)")
    print(f"transformer / lstm time ratio: {results['transformer'] / results['lstm']:.2f} (target <= 1.5)")


if __name__ == "__main__":
    main()
