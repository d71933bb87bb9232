"""Score checkpoints and F0 backends against a reference corpus with known F0.

    python evaluate.py --reference DIR [--checkpoint CKPT ...] [--backends harvest,swiftf0,...]
                       [--by-condition] [--out DIR] [--save-predictions DIR] [--device auto|cpu|cuda]

DIR is an evaluation corpus: `manifest.csv` (id,wav,ref; paths relative to DIR) and one `time,f0` CSV
per clip (s, Hz, 0 = unvoiced). Every system predicts every clip (24 kHz mono, as audio.load_audio gives
it); its frames are read at the reference's frame times by the benchmark scorer's rule (see
align_to_reference), pooled over clips, and scored by metrics.pitch_metrics. The printed table has
one row per system (and with --by-condition one per system and condition, the condition being the id's
part after its last `_`): RPA, RCA, GPE, VUV_F1, FFE, MED_CENTS and speed, in times real time (audio
seconds / seconds spent predicting, loading excluded, after one untimed warm-up call per system, on
--threads torch threads: 1 by default, as the corpus maintainers' peer table was timed).
--out DIR writes the rows, with every metric, to results.csv and results.json. --save-predictions DIR
writes DIR/<system>/<id>.csv (time,f0,voiced), so the numbers can be checked with an independent scorer.

Systems: each --checkpoint (predicted with infer.py's Predictor: F0 in every frame, voicing at the stored
threshold) and the backends of f0_backends.py, named in BACKEND_SYSTEMS; a backend's F0 is 0 wherever it
says unvoiced.
"""
import csv
import json
import math
import os
import re
import time as timer

import click
import numpy as np
import torch
from tqdm import tqdm

from audio import AudioError, SAMPLE_RATE, frame_times, load_audio
from config_defaults import DEFAULTS
from f0_backends import BACKENDS, backend_options
from infer import load_predictor, write_csv
from metrics import pitch_metrics

# name -> (f0_backends backend, settings that differ from the training config's labelling defaults).
BACKEND_SYSTEMS = {
    "harvest": ("pyworld", {"algorithm": "harvest"}),
    "dio": ("pyworld", {"algorithm": "dio", "fallback": None}),
    "torchcrepe_tiny": ("torchcrepe", {"model": "tiny"}),  # viterbi, periodicity >= 0.21 (the defaults)
    "torchcrepe_full": ("torchcrepe", {"model": "full"}),
    "swiftf0": ("swiftf0", {"confidence_threshold": 0.5}),  # the setting of the corpus maintainers' peer table
    "praat": ("praat", {"method": "ac"}),
}
LABEL_F0_PARAMS = DEFAULTS["dataset_params"]["f0_params"]
TABLE_COLUMNS = ("RPA", "RCA", "GPE", "VUV_F1", "FFE", "MED_CENTS", "x_realtime")
# score.py leaves reference frames more than this outside a prediction's time span without an estimate.
SPAN_MARGIN_S = 0.02


class CorpusError(ValueError):
    """A reference folder or file that cannot be used; the message is one line naming it and the fix."""


# ----------------------------------------------------------------------------------------------
# Reference corpus
# ----------------------------------------------------------------------------------------------


def read_manifest(folder):
    """Rows {id, wav, ref} of folder/manifest.csv, with wav and ref made paths."""
    path = os.path.join(folder, "manifest.csv")
    if not os.path.isfile(path):
        raise CorpusError(f"{folder}: no manifest.csv; give an evaluation corpus folder "
                          "(manifest.csv with id,wav,ref and one time,f0 CSV per clip)")
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    if not rows or not {"id", "wav", "ref"} <= set(rows[0]):
        raise CorpusError(f"{path}: needs a header id,wav,ref and at least one row")
    return [{"id": row["id"], "wav": os.path.join(folder, row["wav"]), "ref": os.path.join(folder, row["ref"])}
            for row in rows]


def read_reference(path):
    """(times s, F0 Hz) of a reference CSV with `time` and `f0` columns in any order."""
    try:
        table = np.atleast_1d(np.genfromtxt(path, delimiter=",", names=True, dtype=np.float64))
        times, f0 = table["time"], table["f0"]
    except (OSError, ValueError) as error:
        raise CorpusError(f"{path}: unreadable reference ({str(error).splitlines()[0]}); "
                          "it needs a header with time and f0 columns") from None
    return times, np.nan_to_num(f0, nan=0.0)


def condition(clip_id):
    """The condition of a clip: its id's part after the last `_` (clean, white20, shift+7, ...)."""
    return clip_id.rsplit("_", 1)[-1]


def align_to_reference(ref_times, times, f0, voiced):
    """A prediction (frame times, F0, voicing) read at the reference's frame times, by the benchmark's rule.

    F0: interpolated in log-frequency between the two neighbouring frames when both carry an F0, else the
    nearest frame's (ties to the earlier). Voicing: the nearest frame's. Reference frames more than 20 ms
    outside the prediction's span get neither. (f0_backends.to_model_grid is not this: it targets our grid
    and zeroes F0 where unvoiced, whereas the benchmark keeps F0 and voicing apart.)
    """
    times, f0 = np.asarray(times, dtype=np.float64), np.nan_to_num(np.asarray(f0, dtype=np.float64), nan=0.0)
    voiced = np.asarray(voiced, dtype=bool)
    if times.size < 2:
        return np.zeros(ref_times.shape), np.zeros(ref_times.shape, dtype=bool)
    right = np.clip(np.searchsorted(times, ref_times), 1, times.size - 1)
    left = right - 1
    nearest = np.where(np.abs(ref_times - times[left]) <= np.abs(times[right] - ref_times), left, right)
    pitched = (f0[left] > 0) & (f0[right] > 0)
    weight = np.clip((ref_times - times[left]) / np.maximum(times[right] - times[left], 1e-9), 0.0, 1.0)
    log_left, log_right = np.log2(np.where(pitched, f0[left], 1.0)), np.log2(np.where(pitched, f0[right], 1.0))
    aligned = np.where(pitched, np.exp2(log_left + weight * (log_right - log_left)), f0[nearest])
    inside = (ref_times >= times[0] - SPAN_MARGIN_S) & (ref_times <= times[-1] + SPAN_MARGIN_S)
    return np.where(inside, aligned, 0.0), voiced[nearest] & inside


# ----------------------------------------------------------------------------------------------
# Systems: 24 kHz mono wave -> prediction columns {time, f0, voiced[, voiced_prob]}
# ----------------------------------------------------------------------------------------------


def backend_system(name):
    """(predict function, settings) for a BACKEND_SYSTEMS name."""
    backend, overrides = BACKEND_SYSTEMS[name]
    settings = {**backend_options(LABEL_F0_PARAMS, backend), **overrides}

    def predict(wave):
        f0 = BACKENDS[backend](wave, **settings)
        return {"time": frame_times(f0.size), "f0": f0, "voiced": f0 > 0}

    return predict, {"backend": backend, **settings}


def checkpoint_system(path, device):
    """(predict function, settings) for a checkpoint, through infer.py's Predictor."""
    predictor = load_predictor(path, device)

    def predict(wave):
        time, f0, voiced, voiced_prob = predictor.predict(wave, SAMPLE_RATE)
        return {"time": time, "f0": f0, "voiced": voiced, "voiced_prob": voiced_prob}

    return predict, {"checkpoint": path, "vuv_threshold": predictor.vuv_threshold}


def parse_backends(text):
    names = [name.strip() for name in (text or "").split(",") if name.strip()]
    unknown = [name for name in names if name not in BACKEND_SYSTEMS]
    if unknown:
        raise click.BadParameter(f"unknown {', '.join(unknown)}; use {', '.join(BACKEND_SYSTEMS)}",
                                 param_hint="--backends")
    return names


def folder_name(system):
    """A system name as one safe folder name (checkpoint paths contain separators)."""
    return re.sub(r"[^\w+.-]+", "_", system).strip("_")


# ----------------------------------------------------------------------------------------------
# Scoring
# ----------------------------------------------------------------------------------------------


def run_systems(clips, systems, save_predictions=None):
    """Per system, per clip: the aligned frames and timing, {system: [clip record]}."""
    records = {name: [] for name in systems}
    for number, clip in enumerate(tqdm(clips, desc="evaluate", unit="clip")):
        try:
            wave = load_audio(clip["wav"])
        except AudioError as error:
            raise CorpusError(str(error)) from None
        ref_times, ref_f0 = read_reference(clip["ref"])
        if number == 0:  # an untimed warm-up call: first-call setup (weights, thread pools) is not speed
            for predict in systems.values():
                predict(wave[:SAMPLE_RATE])
        for name, predict in systems.items():
            start = timer.perf_counter()
            columns = predict(wave)
            seconds = timer.perf_counter() - start
            if save_predictions:
                folder = os.path.join(save_predictions, folder_name(name))
                os.makedirs(folder, exist_ok=True)
                write_csv(os.path.join(folder, f"{clip['id']}.csv"), columns)
            est_f0, est_voiced = align_to_reference(ref_times, columns["time"], columns["f0"], columns["voiced"])
            records[name].append({"condition": condition(clip["id"]), "ref_f0": ref_f0, "est_f0": est_f0,
                                  "est_voiced": est_voiced, "audio_s": len(wave) / SAMPLE_RATE,
                                  "seconds": seconds})
    return records


def score(system, condition_name, records):
    """One table row: pooled metrics and speed over `records` (clips)."""
    metrics = pitch_metrics(*(np.concatenate([r[key] for r in records]) for key in ("ref_f0", "est_f0", "est_voiced")))
    audio_s, seconds = sum(r["audio_s"] for r in records), sum(r["seconds"] for r in records)
    return {"system": system, "condition": condition_name, "clips": len(records), **metrics,
            "audio_s": audio_s, "x_realtime": audio_s / seconds if seconds > 0 else math.inf}


def score_rows(records, by_condition):
    rows = []
    for system, clips in records.items():
        rows.append(score(system, "all", clips))
        if by_condition:
            conditions = list(dict.fromkeys(r["condition"] for r in clips))  # corpus order
            rows += [score(system, name, [r for r in clips if r["condition"] == name]) for name in conditions]
    return rows


def format_table(rows):
    width = max(len("system"), *(len(row["system"]) for row in rows))
    header = f"{'system':<{width}}  {'condition':<9} {'clips':>5} " + " ".join(f"{c:>10}" for c in TABLE_COLUMNS)
    lines = [header, "-" * len(header)]
    for row in rows:
        values = " ".join(f"{row[c]:>10.1f}" if c != "x_realtime" else f"{row[c]:>9.1f}x" for c in TABLE_COLUMNS)
        lines.append(f"{row['system']:<{width}}  {row['condition']:<9} {row['clips']:>5} {values}")
    return "\n".join(lines)


def json_safe(value):
    """nan/inf as null: JSON has no such numbers."""
    return None if isinstance(value, float) and not math.isfinite(value) else value


def write_results(out, rows, reference, settings):
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "results.csv"), "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    with open(os.path.join(out, "results.json"), "w", encoding="utf-8") as handle:
        json.dump({"reference": os.path.abspath(reference), "systems": settings,
                   "rows": [{k: json_safe(v) for k, v in row.items()} for row in rows]}, handle, indent=1)


@click.command()
@click.option("--reference", required=True, type=click.Path(), help="corpus folder with manifest.csv")
@click.option("--checkpoint", "checkpoints", multiple=True, type=click.Path(dir_okay=False),
              help="a checkpoint to score (repeatable)")
@click.option("--backends", default="", help=f"comma-separated: {', '.join(BACKEND_SYSTEMS)}")
@click.option("--by-condition", is_flag=True, help="also one row per condition (id suffix)")
@click.option("--out", type=click.Path(file_okay=False), help="write results.csv and results.json here")
@click.option("--save-predictions", type=click.Path(file_okay=False),
              help="write <system>/<id>.csv (time,f0,voiced) per clip here")
@click.option("--device", default="auto", show_default=True, help="for checkpoints: auto | cpu | cuda | cuda:N")
@click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True,
              help="torch CPU threads while predicting (the speed column depends on it)")
def main(reference, checkpoints, backends, by_condition, out, save_predictions, device, threads):
    """Score checkpoints and F0 backends against a reference corpus with known F0 (manifest.csv with
    id,wav,ref and one time,f0 CSV per clip); one row per system, and per condition with --by-condition.
    """
    backend_names = parse_backends(backends)
    if not checkpoints and not backend_names:
        raise click.UsageError("nothing to evaluate: give --checkpoint and/or --backends")
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        clips = read_manifest(reference)
        systems, settings = {}, {}
        for path in checkpoints:
            systems[path], settings[path] = checkpoint_system(path, device)
        for name in backend_names:
            systems[name], settings[name] = backend_system(name)
        records = run_systems(clips, systems, save_predictions)
    except (ValueError, ImportError) as error:  # CorpusError, CheckpointError, backend settings, packages
        raise click.ClickException(str(error).splitlines()[0]) from None
    finally:
        torch.set_num_threads(previous_threads)  # the command may run inside another program (tests)
    rows = score_rows(records, by_condition)
    click.echo(format_table(rows))
    if out:
        write_results(out, rows, reference, settings)
        click.echo(f"wrote {os.path.join(out, 'results.csv')} and results.json")


if __name__ == "__main__":
    main()
