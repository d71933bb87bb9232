"""Score checkpoints and F0 backends against a reference corpus with known F0.

    python evaluate.py --reference DIR [--checkpoint CKPT ...] [--backends harvest,swiftf0,...]
                       [--by-condition] [--by-band] [--out DIR] [--save-predictions DIR] [--device auto|cpu|cuda]

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
threshold), the backends of f0_backends.py, named in BACKEND_SYSTEMS, and the training labels of the default
config, `consensus` or `cascade` (LABEL_SYSTEMS); a backend's or label's F0 is 0 wherever it says unvoiced.
"""
import csv
import io
import json
import math
import os
import re
import time as timer

import click
import numpy as np
import torch
from tqdm import tqdm

from audio import AudioError, SAMPLE_RATE, decode_lines, frame_times, load_audio, write_atomically
from config_defaults import DEFAULTS
from f0_backends import BACKENDS, backend_options
from f0_labels import compute_f0, label_settings
from infer import load_predictor, write_csv
from metrics import band_metrics, pitch_metrics

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
# The training labels themselves, as f0_labels computes them under the default config in each mode: a model
# learns its labels' contour and voicing, so their score on a reference is about the best it can reach there.
LABEL_SYSTEMS = ("consensus", "cascade")
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
    rows = read_csv_rows(path, ("id", "wav", "ref"), "manifest")
    for line, row in rows:
        missing = [key for key in ("id", "wav", "ref") if not (row.get(key) or "").strip()]
        if missing:
            raise CorpusError(f"{path}:{line}: the row has no {', '.join(missing)}; every row is id,wav,ref "
                              "(paths relative to the corpus folder)")
    return [{"id": row["id"], "wav": os.path.join(folder, row["wav"]), "ref": os.path.join(folder, row["ref"]),
             "row": f"{path}:{line}"} for line, row in rows]


def read_csv_rows(path, columns, what):
    """[(line number, row dict)] of a CSV file (UTF-8, with or without a BOM) whose header holds `columns`;
    a CorpusError naming the file (and line) for anything else."""
    try:
        with open(path, "rb") as handle:
            text = "".join(decode_lines(handle.read(), path, what))
    except OSError as error:
        raise CorpusError(f"{path}: cannot read the {what} ({error.strerror or error})") from None
    except ValueError as error:  # not UTF-8
        raise CorpusError(str(error)) from None
    reader = csv.DictReader(io.StringIO(text, newline=""))
    rows = []
    for row in reader:
        rows.append((reader.line_num, row))
    if not rows or not set(columns) <= set(reader.fieldnames or ()):
        raise CorpusError(f"{path}: needs a header {','.join(columns)} and at least one row")
    return rows


def read_reference(path):
    """(times s, F0 Hz) of a reference CSV with `time` and `f0` columns in any order (F0 0 or nan = unvoiced)."""
    rows = read_csv_rows(path, ("time", "f0"), "reference")
    table = np.zeros((len(rows), 2))
    for index, (line, row) in enumerate(rows):
        try:
            table[index] = [float(row["time"]), float(row["f0"])]
        except (TypeError, ValueError):  # a short row gives None, text gives ValueError
            raise CorpusError(f"{path}:{line}: time {row['time']!r}, f0 {row['f0']!r} is not a pair of numbers; "
                              "every row is a time in s and an F0 in Hz (0 = unvoiced)") from None
        if not math.isfinite(table[index, 0]):
            raise CorpusError(f"{path}:{line}: time {row['time']!r} is not a finite number of seconds")
    return table[:, 0], np.nan_to_num(table[:, 1], nan=0.0)


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


def label_system(mode):
    """(predict function, settings) for the training labels of a LABEL_SYSTEMS mode. Frames the consensus
    leaves uncertain (NaN: no loss in training) are scored as unvoiced."""
    settings = label_settings({**LABEL_F0_PARAMS, "mode": mode})

    def predict(wave):
        f0 = np.nan_to_num(compute_f0(wave, settings)[0], nan=0.0)
        return {"time": frame_times(f0.size), "f0": f0, "voiced": f0 > 0}

    return predict, settings.effective


def checkpoint_system(path, device):
    """(predict function, settings) for a checkpoint, through infer.py's Predictor."""
    predictor = load_predictor(path, device)

    def predict(wave):
        time, f0, voiced, voiced_prob = predictor.predict(wave, SAMPLE_RATE)
        return {"time": time, "f0": f0, "voiced": voiced, "voiced_prob": voiced_prob}

    return predict, {"checkpoint": path, "vuv_threshold": predictor.vuv_threshold}


def parse_backends(text):
    names = [name.strip() for name in (text or "").split(",") if name.strip()]
    known = (*BACKEND_SYSTEMS, *LABEL_SYSTEMS)
    unknown = [name for name in names if name not in known]
    if unknown:
        raise click.BadParameter(f"unknown {', '.join(unknown)}; use {', '.join(known)}",
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
        where = clip.get("row", "manifest.csv")
        if not os.path.isfile(clip["wav"]):
            raise CorpusError(f"{where}: {clip['wav']}: audio file not found; fix the row's wav path (relative to "
                              "the corpus folder) or restore the file")
        try:
            wave = load_audio(clip["wav"])
        except AudioError as error:
            raise CorpusError(f"{where}: {error}") from None
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


BAND_COLUMNS = ("N_FRAMES", "RPA", "GPE", "VUV_R")


def band_rows(records):
    """Per system, per reference-F0 band (metrics.F0_BANDS_HZ): frames, RPA, GPE and coverage (VUV_R)."""
    rows = []
    for system, clips in records.items():
        pooled = (np.concatenate([r[key] for r in clips]) for key in ("ref_f0", "est_f0", "est_voiced"))
        for band, metrics in band_metrics(*pooled).items():
            rows.append({"system": system, "band_hz": band, **{key: metrics[key] for key in BAND_COLUMNS}})
    return rows


def format_band_table(rows):
    width = max(len("system"), *(len(row["system"]) for row in rows))
    lines = [f"{'system':<{width}}  {'band_hz':<9} {'frames':>8} {'RPA':>7} {'GPE':>7} {'coverage':>9}"]
    lines.append("-" * len(lines[0]))
    for row in rows:
        lines.append(f"{row['system']:<{width}}  {row['band_hz']:<9} {row['N_FRAMES']:>8} {row['RPA']:>7.1f} "
                     f"{row['GPE']:>7.1f} {row['VUV_R']:>9.1f}")
    return "\n".join(lines)


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


def write_results(out, rows, reference, settings, bands=()):
    """results.csv and results.json (with the --by-band rows under "bands") in `out`, each written atomically."""
    os.makedirs(out, exist_ok=True)
    table = io.StringIO(newline="")
    writer = csv.DictWriter(table, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    write_atomically(os.path.join(out, "results.csv"), table.getvalue().encode())
    document = {"reference": os.path.abspath(reference), "systems": settings,
                "rows": [{k: json_safe(v) for k, v in row.items()} for row in rows],
                "bands": [{k: json_safe(v) for k, v in row.items()} for row in bands]}
    write_atomically(os.path.join(out, "results.json"), json.dumps(document, indent=1).encode())


def write_error(error):
    """One line for an output that could not be written."""
    if error.filename is None:
        return str(error).splitlines()[0]  # infer.OutputError: already names the file
    return f"{error.filename}: cannot write ({error.strerror or error}); check --out / --save-predictions"


@click.command()
@click.option("--reference", required=True, type=click.Path(), help="corpus folder with manifest.csv")
@click.option("--checkpoint", "checkpoints", multiple=True, type=click.Path(dir_okay=False),
              help="a checkpoint to score (repeatable)")
@click.option("--backends", default="",
              help=f"comma-separated: {', '.join(BACKEND_SYSTEMS)}; "
                   f"{' or '.join(LABEL_SYSTEMS)} for the training labels")
@click.option("--by-condition", is_flag=True, help="also one row per condition (id suffix)")
@click.option("--by-band", is_flag=True, help="also RPA, GPE and coverage per reference-F0 band (50-1000 Hz)")
@click.option("--out", type=click.Path(file_okay=False), help="write results.csv and results.json here")
@click.option("--save-predictions", type=click.Path(file_okay=False),
              help="write <system>/<id>.csv (time,f0,voiced) per clip here")
@click.option("--device", default="auto", show_default=True, help="for checkpoints: auto | cpu | cuda | cuda:N")
@click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True,
              help="torch CPU threads while predicting (the speed column depends on it)")
def main(reference, checkpoints, backends, by_condition, by_band, out, save_predictions, device, threads):
    """Score checkpoints and F0 backends against a reference corpus with known F0 (manifest.csv with
    id,wav,ref and one time,f0 CSV per clip); one row per system, and per condition with --by-condition.
    """
    backend_names = parse_backends(backends)
    if not checkpoints and not backend_names:
        raise click.UsageError("nothing to evaluate: give --checkpoint and/or --backends")
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for folder in (out, save_predictions):  # an unwritable output folder fails before the evaluation
            if folder:
                os.makedirs(folder, exist_ok=True)
        clips = read_manifest(reference)
        systems, settings = {}, {}
        for path in checkpoints:
            systems[path], settings[path] = checkpoint_system(path, device)
        for name in backend_names:
            systems[name], settings[name] = label_system(name) if name in LABEL_SYSTEMS else backend_system(name)
        records = run_systems(clips, systems, save_predictions)
    except (ValueError, ImportError) as error:  # CorpusError, CheckpointError, backend settings, packages
        raise click.ClickException(str(error).splitlines()[0]) from None
    except OSError as error:
        raise click.ClickException(write_error(error)) from None
    finally:
        torch.set_num_threads(previous_threads)  # the command may run inside another program (tests)
    rows = score_rows(records, by_condition)
    click.echo(format_table(rows))
    bands = band_rows(records) if by_band else []
    if bands:
        click.echo(format_band_table(bands))
    if out:
        try:
            write_results(out, rows, reference, settings, bands)
        except OSError as error:
            raise click.ClickException(write_error(error)) from None
        click.echo(f"wrote {os.path.join(out, 'results.csv')} and results.json")


if __name__ == "__main__":
    main()
