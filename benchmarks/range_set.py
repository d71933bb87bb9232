"""Build the range set: a small exact-F0 corpus of real voices and WORLD renders over the vocal range.

    python benchmarks/range_set.py [--out Data/range_set] [--debs Data/debs] [--clips-per-speaker 16]

Real voices: the Czech Fish Fillets heroes of the speech recipe (Data/prepare_speech.py; packages
fillets-ng-data-cs and fillets-ng-data, fetched with `apt-get download` into --debs unless already
there, unpacked with dpkg-deb, nothing installed). Each chosen clip is analysed with WORLD (harvest +
StoneMask, cheaptrick, D4C) and resynthesised with its F0 scaled by one ratio per clip, so the clip's
median F0 lands on the next of a set of targets spread evenly (in log-F0) over 50-1000 Hz, the shift
limited to +-`--max-shift` semitones. The resynthesised F0 is the label: exact by construction, on
real voices' spectra. Added: WORLD renders (synthetic.py) with creak, and with high voices (400-900 Hz),
which shifted real clips do not reach. Written in evaluate.py's layout: `manifest.csv` (id,wav,ref),
`wav/<id>.wav`, `ref/<id>.csv` (time,f0); an id's last `_` part is its kind (real, creak, high).
"""
import argparse
import copy
import csv
import io
import os
import sys
import tempfile

import numpy as np
import soundfile as sf

sys.path[:0] = [os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "Data")]
import prepare_speech  # noqa: E402
import synthetic  # noqa: E402
from audio import SAMPLE_RATE, frame_times, load_audio, write_atomically  # noqa: E402
from config_defaults import DEFAULTS  # noqa: E402
from f0_backends import pyworld_f0  # noqa: E402

PACKAGES = ("fillets-ng-data-cs", "fillets-ng-data")
SPEAKERS = prepare_speech.HELD_OUT_SPEAKERS  # the recipe never trains on them
SMOOTHING_FRAMES = 5  # median filter over each voiced run of the source contour


def resynthesise(audio, target_median_hz, max_shift):
    """(audio, exact F0 on the model grid, semitones): harvest + StoneMask F0, one shift, WORLD resynthesis."""
    f0 = pyworld_f0(audio, fallback=None, d4c_threshold=0.0, f0_floor=50.0, f0_ceil=1000.0)
    voiced = f0 > 0
    if voiced.sum() < 20:
        return None
    semitones = float(np.clip(12 * np.log2(target_median_hz / np.median(f0[voiced])), -max_shift, max_shift))
    # Harvest's frame-to-frame jumps on the source are analysis errors, not the voice: resynthesised as they
    # are, they would become reference F0 that no tracker (windows of several periods) can follow.
    f0 = synthetic.median_smoothed(f0, SMOOTHING_FRAMES)
    out, label = synthetic.world_resynthesise(audio, f0, semitones)
    return out, label, semitones


def write_clip(out, clip_id, audio, f0, rows):
    buffer = io.BytesIO()
    sf.write(buffer, audio, SAMPLE_RATE, format="WAV", subtype="PCM_16")
    write_atomically(os.path.join(out, "wav", f"{clip_id}.wav"), buffer.getvalue())
    lines = ["time,f0"] + [f"{t:.4f},{hz:.3f}" for t, hz in zip(frame_times(len(f0)), f0)]
    write_atomically(os.path.join(out, "ref", f"{clip_id}.csv"), ("\n".join(lines) + "\n").encode())
    rows.append((clip_id, f"wav/{clip_id}.wav", f"ref/{clip_id}.csv"))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="Data/range_set")
    parser.add_argument("--debs", default="Data/debs", help="where the .deb files are (or are downloaded to)")
    parser.add_argument("--clips-per-speaker", type=int, default=16)
    parser.add_argument("--max-shift", type=float, default=12.0, help="semitones")
    parser.add_argument("--renders", type=int, default=6, help="WORLD renders of each extra kind (creak, high)")
    args = parser.parse_args()
    for folder in ("wav", "ref"):
        os.makedirs(os.path.join(args.out, folder), exist_ok=True)
    rows = []
    with tempfile.TemporaryDirectory() as tree:
        for package in PACKAGES:
            prepare_speech.extract_package(prepare_speech.download_package(package, args.debs), tree)
        clips = prepare_speech.fillets_clips(os.path.join(tree, prepare_speech.FILLETS_ROOT))
        chosen = []
        for speaker in SPEAKERS:
            own = sorted((c for c in clips if c.speaker == speaker), key=lambda c: c.name)
            chosen += own[:: max(1, len(own) // args.clips_per_speaker)][: args.clips_per_speaker]
        targets = np.geomspace(55.0, 900.0, len(chosen))
        order = np.random.default_rng(0).permutation(len(chosen))  # targets spread over both speakers
        for target, clip in zip(targets[order], chosen):
            audio = prepare_speech.trim_silence(load_audio(clip.source))
            result = resynthesise(audio, target, args.max_shift)
            if result is not None:
                audio, f0, semitones = result
                write_clip(args.out, f"{clip.speaker}_{clip.name}_real", audio, f0, rows)
                print(f"{clip.speaker} {clip.name}: {semitones:+.1f} st, median {np.median(f0[f0 > 0]):.0f} Hz")
    world = copy.deepcopy(DEFAULTS["dataset_params"]["synthetic_data"]["world"])
    kinds = {"creak": dict(world, creak_probability=1.0, pitch_range=[70.0, 140.0]),
             "high": dict(world, pitch_range=[400.0, 900.0], creak_probability=0.0)}
    for kind, params in kinds.items():
        rng = np.random.default_rng(11)
        for number in range(args.renders):
            audio, f0 = synthetic.render_world_utterance(rng, params)
            write_clip(args.out, f"world{number}_{kind}", audio, f0, rows)
    with open(os.path.join(args.out, "manifest.csv"), "w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows([("id", "wav", "ref"), *rows])
    print(f"wrote {len(rows)} clips to {args.out}/manifest.csv")


if __name__ == "__main__":
    main()
