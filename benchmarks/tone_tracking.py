"""Median pitch error on harmonic glides from 60 to 800 Hz, per checkpoint: the shipped model's tone test, widened.

    python benchmarks/tone_tracking.py CKPT [CKPT ...]

tests/test_pretrained.py asserts that pretrained/jdc_lstm.pth tracks its glides (f -> 1.2 f over 1 s,
tests/conftest.py::tone_tracking) within 30 cents median. This prints the same measure for every tone the v2
issue names, for any checkpoint, so that a candidate is checked against the test before it replaces the
shipped file. Voiced share: inside the glide, and in the silence around it.
"""
import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]
from conftest import tone_tracking  # noqa: E402
from infer import load_predictor  # noqa: E402

TONES_HZ = (60, 70, 80, 110, 180, 300, 400, 500, 600, 800)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="+")
    args = parser.parse_args()
    print(f"{'checkpoint':40s} " + " ".join(f"{f:>6d}" for f in TONES_HZ) + "  (median cents; * = over 30)")
    for path in args.checkpoints:
        predictor = load_predictor(path, device="cpu")
        cells, shares = [], []
        for f0_hz in TONES_HZ:
            median_cents, inside, outside = tone_tracking(predictor, f0_hz)
            cells.append(f"{median_cents:5.1f}{'*' if median_cents >= 30 else ' '}")
            shares.append((inside, outside))
        print(f"{path[-40:]:40s} " + " ".join(cells))
        print(f"{'  % voiced inside/outside':40s} " + " ".join(f"{100 * i:3.0f}/{100 * o:<2.0f}" for i, o in shares))


if __name__ == "__main__":
    main()
