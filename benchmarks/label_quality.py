"""Label quality per mode against exact F0: precision, coverage, V/UV F1 and seconds per audio second.

    python benchmarks/label_quality.py [--reference Data/range_set] [--modes cascade,consensus,harvest71,harvest50]

--reference is a corpus in evaluate.py's layout (benchmarks/range_set.py builds one). Modes: the default
config's f0_params with `mode` set to cascade or consensus (consensus runs harvest, swiftf0 and praat),
harvest71 (the cascade with PyWorld's old 71-800 Hz range) and harvest50 (pyworld.harvest called directly
at 50-1000 Hz: no StoneMask, no D4C check, no fallback). Per reference-F0 band (metrics.F0_BANDS_HZ):
precision = certain voiced labels within 50 cents / certain voiced labels; coverage = reference-voiced
frames labelled certain, voiced and within 50 cents / reference-voiced frames; RPA = reference-voiced
frames whose label is within 50 cents (uncertain counts as a miss). Overall: the same, V/UV F1 on the
certain frames, the uncertain share, and labelling seconds per audio second (one process). The band
table is printed for all clips and again per kind (an id's last `_` part, e.g. the range set's real,
creak and high) when there are several.
"""
import argparse
import copy
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from audio import FRAME_SECONDS, SAMPLE_RATE, load_audio  # noqa: E402
from config_defaults import DEFAULTS  # noqa: E402
from evaluate import read_manifest, read_reference  # noqa: E402
from f0_backends import pyworld_f0  # noqa: E402
from f0_labels import compute_f0  # noqa: E402
from metrics import F0_BANDS_HZ, band_name, cents_error, f1_percent, percent  # noqa: E402


def mode_params(mode):
    params = copy.deepcopy(DEFAULTS["dataset_params"]["f0_params"])
    params["mode"] = "consensus" if mode == "consensus" else "cascade"
    for name in ("swiftf0", "praat"):
        params[name]["enabled"] = mode == "consensus"
    if mode == "harvest71":
        params["pyworld"].update(f0_floor=71.0, f0_ceil=800.0)
    return params


def label_contour(wave, mode):
    if mode == "harvest50":  # harvest alone: no fallback, StoneMask or D4C check
        return pyworld_f0(wave, fallback=None, stonemask=False, d4c_threshold=0.0, f0_floor=50.0, f0_ceil=1000.0)
    return compute_f0(wave, mode_params(mode))[0]


def on_reference_times(label, ref_times):
    """The label's frame nearest each reference time (NaN kept: uncertain stays uncertain; outside: 0)."""
    frames = np.round(np.asarray(ref_times) / FRAME_SECONDS).astype(int)
    inside = (frames >= 0) & (frames < label.size)
    return np.where(inside, label[np.clip(frames, 0, label.size - 1)], 0.0)


def quality(ref, label):
    """Row of figures for pooled reference and label frames (label NaN = uncertain)."""
    certain = ~np.isnan(label)
    label_voiced, ref_voiced = certain & (label > 0), ref > 0
    close = label_voiced & ref_voiced & (np.abs(cents_error(ref, np.nan_to_num(label))) <= 50)  # NaN: never close
    row = {"precision": percent(close.sum(), label_voiced.sum()), "coverage": percent(close.sum(), ref_voiced.sum()),
           "frames": int(ref_voiced.sum())}
    tp, fp = (label_voiced & ref_voiced).sum(), (label_voiced & ~ref_voiced).sum()
    fn = (certain & ~label_voiced & ref_voiced).sum()
    row["vuv_f1"], row["uncertain"] = float(f1_percent(tp, fp, fn)), percent((~certain).sum(), label.size)
    return row


def print_bands(title, ref, label):
    print(f"{title}\n{'band_hz':<9} {'frames':>7} {'precision':>9} {'coverage':>9}")
    for low, high in F0_BANDS_HZ:
        band = (ref >= low) & (ref < high) & (ref > 0)
        row = quality(ref[band], label[band])
        print(f"{band_name(low, high):<9} {row['frames']:>7} {row['precision']:>9.1f} {row['coverage']:>9.1f}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", default="Data/range_set")
    parser.add_argument("--modes", default="cascade,consensus,harvest71,harvest50")
    args = parser.parse_args()
    clips = read_manifest(args.reference)
    waves = [load_audio(clip["wav"]) for clip in clips]
    references = [read_reference(clip["ref"]) for clip in clips]
    refs = [f0 for _, f0 in references]
    audio_seconds = sum(len(wave) for wave in waves) / SAMPLE_RATE
    print(f"{len(clips)} clips, {audio_seconds:.0f} s of audio from {args.reference}")
    kinds = np.array([clip["id"].rsplit("_", 1)[-1] for clip in clips])
    for mode in args.modes.split(","):
        labels = []
        start = time.perf_counter()
        for wave, (ref_times, _) in zip(waves, references):
            labels.append(on_reference_times(label_contour(wave, mode), ref_times))
        seconds = time.perf_counter() - start
        overall = quality(np.concatenate(refs), np.concatenate(labels))
        print(f"\n{mode}: {seconds / audio_seconds:.3f} s per audio second, V/UV F1 {overall['vuv_f1']:.1f}, "
              f"uncertain {overall['uncertain']:.1f} %, precision {overall['precision']:.1f}, "
              f"coverage (= RPA) {overall['coverage']:.1f}")
        groups = [("all clips", np.ones(len(clips), dtype=bool))]
        if len(np.unique(kinds)) > 1:
            groups += [(f"kind {kind}", kinds == kind) for kind in np.unique(kinds)]
        for title, chosen in groups:
            print_bands(title, *(np.concatenate([x for x, keep in zip(xs, chosen) if keep]) for xs in (refs, labels)))


if __name__ == "__main__":
    main()
