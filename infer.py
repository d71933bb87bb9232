"""F0 and voicing for audio files from a trained checkpoint: the command and the Python API.

Command:
    python infer.py --checkpoint CKPT INPUT... --out DIR [--format csv|npy] [--plot]
                    [--device auto|cpu|cuda[:N]] [--batch-size N] [--chunk-seconds S]

INPUT is an audio file, a folder (searched recursively for the extensions soundfile reads) or a `.txt`
list file (`filename|anything` per line). Per input file, in DIR:
    <name>.csv   header `time,f0,voiced,voiced_prob`: frame centre (s), F0 (Hz, the model's estimate in
                 every frame, unvoiced ones included), voicing decision 0/1 at the checkpoint's calibrated
                 `vuv_threshold` (0.5 when it has none), P(voiced)
    <name>.npy   (--format npy) the same as a structured array with fields time (float64), f0 (float32),
                 voiced (uint8), voiced_prob (float32): `np.load(path)["f0"]`
    <name>.png   (--plot) the contour over the clip's low-frequency spectrogram, P(voiced) below it
<name> is the file's stem; inputs whose names would clash (a shared stem, or `a.wav` beside `a.wav.flac`)
are named by their path relative to those inputs' common folder, `/` written `__`, extension kept
(`spk1__a.wav`), so no output overwrites another.

Frames are the model's grid (24 kHz, hop 300: 12.5 ms, 1 + N // 300 frames). A file that cannot be read
is reported on one line and skipped; the others are written, and the exit status is then 1. Outputs are
written atomically (temporary file + rename): a full disk or an unwritable --out stops the command with one
line naming the file (exit status 1), and no file is left half-written.
Without --checkpoint, pretrained/jdc_lstm.pth beside this file is used when it is shipped.

Python:
    predictor = load_predictor("best.pth")                    # device="auto"
    time, f0, voiced, voiced_prob = predictor.predict(wave, sr)
    time, f0, voiced, voiced_prob = predict(wave, sr, checkpoint="best.pth")   # loads once, then cached

Long files run in overlapping windows of --chunk-seconds, stitched in the middle of each overlap: every
frame comes from a window that gives it CONTEXT_SECONDS of input on both sides (or reaches the clip's
edge), so the result matches one pass over the whole file (within 1 cent in the tests) at bounded memory.
"""
import collections
import concurrent.futures
import ctypes
import functools
import io
import itertools
import os
import time as timer

import click
import numpy as np
import soundfile as sf
import torch
from tqdm import tqdm

from audio import (AudioError, FRAMES_PER_SECOND, HOP_LENGTH, SAMPLE_RATE, frame_times, load_audio, num_frames,
                   read_file_list, to_model_rate, write_atomically)
from devices import resolve_device
from features import mel_from_padded, padded_crop, padded_samples
from model import (DEFAULT_VUV_THRESHOLD, CheckpointError, build_model, checkpoint_model_params, load_checkpoint,
                   voiced, winograd_model)

DEFAULT_CHECKPOINT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pretrained", "jdc_lstm.pth")
CHUNK_SECONDS = 30.0
# Both sequence models see the whole window: the BiLSTM carries state across it and the Transformer
# attends over it, so a frame needs seconds of context on each side to come out as in one pass.
CONTEXT_SECONDS = 4.0
# Windows are padded with silence and only windows of one padded length share a batch, so a file's result
# never depends on which other files were in its batch. The padding is at least MIN_PAD_FRAMES, the
# CNN's reach (8 frames: eight 3x3 convolutions in time): the last frames of a clip then always see silence
# after it, never the convolutions' zero padding, however long the window is. Lengths are rounded up to a multiple of
# PAD_MULTIPLE frames (100 ms), so files of similar length share a forward pass (on a GPU, pass a large
# --batch-size to label a corpus) while a window alone wastes at most 7 frames beyond MIN_PAD_FRAMES. The
# rule is the same on every device, so CPU and GPU results agree.
PAD_MULTIPLE = 8
MIN_PAD_FRAMES = 8
PREFETCH_FILES = 4  # files decoded ahead, in a background thread, while the model runs
AUDIO_EXTENSIONS = frozenset(
    {f".{name.lower()}" for name in sf.available_formats() if name != "RAW"} | {".aif", ".oga", ".opus"})
CSV_FORMATS = {"time": "%.4f", "f0": "%.3f", "voiced": "%d", "voiced_prob": "%.4f"}
NPY_DTYPE = np.dtype([("time", "<f8"), ("f0", "<f4"), ("voiced", "u1"), ("voiced_prob", "<f4")])
# glibc's mallopt parameters (malloc.h)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
HEAP_KEEP_BYTES = 1 << 30


# ----------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------


def resolve_checkpoint(checkpoint):
    """The checkpoint given, else the shipped pretrained/jdc_lstm.pth, else a CheckpointError."""
    if checkpoint:
        return os.fspath(checkpoint)
    if os.path.isfile(DEFAULT_CHECKPOINT):
        return DEFAULT_CHECKPOINT
    raise CheckpointError("no checkpoint given and none shipped (pretrained/jdc_lstm.pth is absent); "
                          "pass --checkpoint PATH (one of ours or a host {'net': ...} file)")


def load_model(path):
    """(model in eval mode, voicing threshold) from one of our checkpoints or a host weights-only file."""
    state = load_checkpoint(path)
    model_params = checkpoint_model_params(state)
    model = build_model(model_params)
    try:
        model.load_state_dict(state["net"])
    except RuntimeError as error:
        problem = next((line.strip() for line in str(error).splitlines()[1:] if line.strip()), str(error))
        raise CheckpointError(f"{path}: its weights do not fit a {model_params['sequence_model']} JDCNet "
                              f"({problem[:200]})") from None
    return model.eval(), float(state.get("vuv_threshold", DEFAULT_VUV_THRESHOLD))


def load_predictor(checkpoint=None, device="auto", batch_size=4, chunk_seconds=CHUNK_SECONDS,
                   context_seconds=CONTEXT_SECONDS):
    """A Predictor for `checkpoint` (default: the shipped pretrained/jdc_lstm.pth)."""
    model, vuv_threshold = load_model(resolve_checkpoint(checkpoint))
    return Predictor(model, vuv_threshold, resolve_device(device), batch_size, chunk_seconds, context_seconds)


@functools.lru_cache(maxsize=2)
def _cached_predictor(checkpoint):
    return load_predictor(checkpoint)


def predict(wave, sr, checkpoint=None):
    """(time, f0, voiced, voiced_prob) for one waveform; the checkpoint is loaded once per process."""
    return _cached_predictor(checkpoint).predict(wave, sr)


# ----------------------------------------------------------------------------------------------
# Prediction
# ----------------------------------------------------------------------------------------------


def chunk_windows(n_frames, window, context):
    """(start, end, keep_start, keep_end) frame ranges: the model runs on [start, end) and the result is
    kept on [keep_start, keep_end). Every window is `window` frames long (the last one ends at the clip's
    end), and every kept frame has `context` frames of input on each side or lies at the clip's edge."""
    if n_frames <= window:
        return [(0, n_frames, 0, n_frames)]
    windows, keep_start = [], 0
    while keep_start < n_frames:
        start = max(0, min(keep_start - context, n_frames - window))
        end = start + window
        keep_end = n_frames if end == n_frames else end - context
        windows.append((start, end, keep_start, keep_end))
        keep_start = keep_end
    return windows


def padded_length(frames):
    return -(-(frames + MIN_PAD_FRAMES) // PAD_MULTIPLE) * PAD_MULTIPLE


class Predictor:
    """A model in eval mode and its calibrated voicing threshold.

    `predict(wave, sr)` for one waveform at any rate; `predict_clips(waves)` for many 24 kHz mono clips,
    batching their windows. Memory is bounded by `batch_size` windows of `chunk_seconds`.
    """

    def __init__(self, model, vuv_threshold=DEFAULT_VUV_THRESHOLD, device="cpu", batch_size=4,
                 chunk_seconds=CHUNK_SECONDS, context_seconds=CONTEXT_SECONDS):
        self.window = round(chunk_seconds * FRAMES_PER_SECOND)
        self.context = round(context_seconds * FRAMES_PER_SECOND)
        if self.window <= 2 * self.context:
            raise ValueError(f"chunk_seconds ({chunk_seconds}) must exceed twice the context ({context_seconds} s)")
        self.device = torch.device(device)
        self.memory_format = torch.contiguous_format
        if self.device.type == "cpu" and torch.get_num_threads() == 1 and torch._nnpack_available():
            # ~1.5x oneDNN's forward on one core; on more threads NNPACK's pool and OpenMP's contend, and
            # oneDNN is faster (benchmarks/model_speed.py)
            model = winograd_model(model)
        elif self.device.type == "cpu":
            # oneDNN's CPU convolutions and poolings run ~20 % faster on channels-last input
            self.memory_format = torch.channels_last
        self.model = model.to(self.device, memory_format=self.memory_format).eval()
        self.vuv_threshold = float(vuv_threshold)
        self.batch_size = int(batch_size)

    def predict(self, wave, sr):
        """(time s, F0 Hz, voiced bool, P(voiced)) per model frame for one waveform (any rate, mono or 2-D)."""
        f0, voiced_prob = self.predict_clips([to_model_rate(wave, sr)])[0]
        return frame_times(f0.size), f0, voiced(voiced_prob, self.vuv_threshold), voiced_prob

    def predict_clips(self, waves):
        """[(F0 Hz, P(voiced))] float32 arrays per 24 kHz mono clip, on the model grid."""
        results = [(np.zeros(num_frames(len(w)), np.float32), np.zeros(num_frames(len(w)), np.float32))
                   for w in waves]
        windows = [(clip, *span) for clip, wave in enumerate(waves)
                   for span in chunk_windows(num_frames(len(wave)), self.window, self.context)]
        windows.sort(key=lambda w: padded_length(w[2] - w[1]))
        for padded, same_length in itertools.groupby(windows, key=lambda w: padded_length(w[2] - w[1])):
            same_length = list(same_length)
            for first in range(0, len(same_length), self.batch_size):
                batch = same_length[first: first + self.batch_size]
                crops = [padded_crop(waves[clip], start, end - start) for clip, start, end, _, _ in batch]
                f0, voiced_prob = self._forward(crops, [end - start for _, start, end, _, _ in batch], padded)
                for row, (clip, start, _, keep_start, keep_end) in enumerate(batch):
                    kept = slice(keep_start - start, keep_end - start)
                    results[clip][0][keep_start:keep_end] = f0[row, kept]
                    results[clip][1][keep_start:keep_end] = voiced_prob[row, kept]
        return results

    @torch.inference_mode()
    def _forward(self, crops, frames, padded):
        """Padded crops (features.padded_crop) of windows of `frames` -> (F0, P(voiced)) (B, padded) arrays.

        The mels are computed on the model's device, padding frames set to the mel of silence.
        """
        waves = torch.zeros(len(crops), padded_samples(padded))
        for row, crop in enumerate(crops):
            waves[row, : len(crop)] = torch.from_numpy(crop)
        valid = torch.arange(padded)[None, :] < torch.tensor(frames)[:, None]
        mel = mel_from_padded(waves.to(self.device, non_blocking=True), valid.to(self.device))
        f0, logit = self.model(mel[:, None].contiguous(memory_format=self.memory_format))
        return f0.float().cpu().numpy(), torch.sigmoid(logit.float()).cpu().numpy()


# ----------------------------------------------------------------------------------------------
# Inputs and outputs
# ----------------------------------------------------------------------------------------------


def audio_files_under(folder):
    """Audio files below `folder`, recursively, in sorted order."""
    found = []
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        found += [os.path.join(root, name) for name in sorted(files)
                  if os.path.splitext(name)[1].lower() in AUDIO_EXTENSIONS]
    return found


def collect_inputs(inputs):
    """Audio paths from files, folders and .txt lists, in the order given, each file once."""
    paths = []
    for item in inputs:
        if os.path.isdir(item):
            paths += audio_files_under(item)
        elif item.lower().endswith(".txt"):
            paths += read_file_list(item)
        else:
            paths.append(item)  # a missing file is reported with the unreadable ones
    unique = {}
    for path in paths:
        unique.setdefault(os.path.abspath(path), path)
    return list(unique.values())


def output_names(paths):
    """Output base name per path, distinct for distinct files: its stem, or where that name clashes with
    another's, the path relative to the clashing paths' common folder with the extension kept and `/`
    written `__` (`a.wav`, `sub__a.wav`, and `a.wav.flac` beside them); a name still taken gets `~2`, `~3`..."""
    absolute = [os.path.abspath(path) for path in paths]
    names = [os.path.splitext(os.path.basename(path))[0] for path in paths]
    by_path = set()  # indices named by their relative path
    while True:
        counts = collections.Counter(names)
        clashing = {i for i, name in enumerate(names) if counts[name] > 1} - by_path
        if not clashing:
            break
        by_path |= clashing
        common = os.path.commonpath([os.path.dirname(absolute[i]) for i in by_path])
        for i in by_path:
            names[i] = os.path.relpath(absolute[i], common).replace(os.sep, "__")
    taken = set()
    for i, name in enumerate(names):  # distinct files whose relative names still meet (`a__b` and `a/b`)
        unique, number = name, 1
        while unique in taken:
            number += 1
            unique = f"{name}~{number}"
        names[i] = unique
        taken.add(unique)
    return names


class OutputError(OSError):
    """An output file that could not be written; the message is one line naming it."""


def write_output(path, payload):
    """Bytes to `path` atomically (a full disk leaves the old file or none, never a truncated one that looks
    complete); an OutputError naming `path` when it fails."""
    try:
        write_atomically(path, payload)
    except OSError as error:
        raise OutputError(f"{path}: cannot write ({error.strerror or error})") from None


def write_csv(path, columns):
    """Columns (name -> 1-D array, names from CSV_FORMATS) as a CSV with a header row, written atomically."""
    buffer = io.BytesIO()
    np.savetxt(buffer, np.column_stack([np.asarray(v, dtype=np.float64) for v in columns.values()]),
               fmt=[CSV_FORMATS[name] for name in columns], delimiter=",", header=",".join(columns), comments="")
    write_output(path, buffer.getvalue())


def write_npy(path, columns):
    table = np.zeros(len(columns["time"]), dtype=NPY_DTYPE)
    for name, values in columns.items():
        table[name] = values
    buffer = io.BytesIO()
    np.save(buffer, table)
    write_output(path, buffer.getvalue())


def write_outputs(out, name, wave, f0, voiced_prob, vuv_threshold, fmt, plot):
    columns = {"time": frame_times(f0.size), "f0": f0, "voiced": voiced(voiced_prob, vuv_threshold),
               "voiced_prob": voiced_prob}
    base = os.path.join(out, name)
    (write_csv if fmt == "csv" else write_npy)(f"{base}.{fmt}", columns)
    if plot:
        from plots import f0_figure  # matplotlib only when plotting

        buffer = io.BytesIO()
        f0_figure([{"title": name, "f0": f0, "prob": voiced_prob, "wave": wave}], vuv_threshold).savefig(
            buffer, format="png", dpi=100)
        write_output(f"{base}.png", buffer.getvalue())


def _load_or_error(path):
    try:
        return load_audio(path)
    except AudioError as error:
        return error


def decoded_ahead(paths, ahead=PREFETCH_FILES):
    """load_audio of each path, in order (its AudioError in place of the wave), decoding up to `ahead` files
    in a background thread while the caller runs the model."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        queue = collections.deque(pool.submit(_load_or_error, path) for path in paths[:ahead])
        for path in paths[ahead:]:
            yield queue.popleft().result()
            queue.append(pool.submit(_load_or_error, path))
        while queue:
            yield queue.popleft().result()


def run_inference(predictor, paths, out, fmt="csv", plot=False, progress=None):
    """Write the outputs of every readable path; returns (failed paths, audio seconds done).

    Files are loaded until about one batch of full windows is pending, then predicted together, so memory
    stays bounded however many files there are. A file that cannot be written (full disk, unwritable --out)
    stops the run with an OutputError naming it: what was written before it is complete.
    """
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as error:
        raise OutputError(f"{out}: cannot create the output folder ({error.strerror or error})") from None
    block_samples = predictor.batch_size * predictor.window * HOP_LENGTH
    pending, pending_samples, failed, audio_seconds, written = [], 0, [], 0.0, [0]

    def flush():
        results = predictor.predict_clips([wave for _, wave in pending])
        for (name, wave), (f0, voiced_prob) in zip(pending, results):
            try:
                write_outputs(out, name, wave, f0, voiced_prob, predictor.vuv_threshold, fmt, plot)
            except OutputError as error:
                raise OutputError(f"{error}; the {written[0]} file(s) written before it are complete, it and the "
                                  "rest were not written: free space or fix --out and run again") from None
            written[0] += 1

    for path, name, wave in zip(paths, output_names(paths), decoded_ahead(paths)):
        if isinstance(wave, AudioError):
            click.echo(f"error: {wave}", err=True)
            failed.append(path)
        else:
            pending.append((name, wave))
            pending_samples += len(wave)
            audio_seconds += len(wave) / SAMPLE_RATE
            if pending_samples >= block_samples:
                flush()
                pending, pending_samples = [], 0
        if progress is not None:
            progress.update(1)
    if pending:
        flush()
    return failed, audio_seconds


# ----------------------------------------------------------------------------------------------
# Command
# ----------------------------------------------------------------------------------------------


def keep_freed_memory_for_reuse():
    """Make glibc keep freed blocks of up to HEAP_KEEP_BYTES in the heap instead of returning them to the OS.

    By default glibc maps every block over its (adaptive) threshold fresh from the OS and unmaps it when freed,
    so each forward pass page-faults its activations in again: ~300k faults over 2 minutes of clips, ~10 % of
    infer.py's time on one thread (benchmarks/infer_speed.py). The heap then holds the peak working set until
    the command ends. Called by the command only, never on import, so a host process's allocator is left as it
    is; a no-op where the C library has no mallopt (macOS, Windows).
    """
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None) if os.name == "posix" else None
    if mallopt is not None:
        mallopt(M_MMAP_THRESHOLD, HEAP_KEEP_BYTES)
        mallopt(M_TRIM_THRESHOLD, HEAP_KEEP_BYTES)


@click.command()
@click.argument("inputs", nargs=-1, type=click.Path())
@click.option("--checkpoint", type=click.Path(dir_okay=False),
              help="one of our checkpoints or a host {'net': ...} file [default: pretrained/jdc_lstm.pth]")
@click.option("--out", type=click.Path(file_okay=False), help="output folder (required with INPUTs)")
@click.option("--format", "fmt", type=click.Choice(["csv", "npy"]), default="csv", show_default=True)
@click.option("--plot", is_flag=True, help="also write <name>.png: contour over the spectrogram")
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda | cuda:N")
@click.option("--batch-size", type=click.IntRange(min=1), default=4, show_default=True,
              help="windows per forward pass")
@click.option("--chunk-seconds", type=click.FloatRange(min=2 * CONTEXT_SECONDS, min_open=True),
              default=CHUNK_SECONDS, show_default=True, help="window length for long files")
def main(inputs, checkpoint, out, fmt, plot, device, batch_size, chunk_seconds):
    """F0, voicing and P(voiced) every 12.5 ms for audio files, folders (searched recursively) and .txt
    list files (`filename|anything` per line).

    Per input, in --out: <name>.csv with time,f0,voiced,voiced_prob (F0 in every frame; voiced at the
    checkpoint's calibrated threshold), or <name>.npy (--format npy: a structured array with those
    fields), and <name>.png with --plot. Inputs sharing a stem are named by their relative path
    (spk1__a.wav). Unreadable files are reported one per line and skipped; the exit status is then 1.
    """
    try:
        if not inputs:
            raise click.UsageError("give at least one INPUT (audio file, folder or .txt list)")
        if not out:
            raise click.UsageError("--out DIR is required to write predictions")
        predictor = load_predictor(checkpoint, device, batch_size, chunk_seconds)
        paths = collect_inputs(inputs)
    except (ValueError, FileNotFoundError) as error:  # CheckpointError, list-file and device errors
        raise click.ClickException(str(error)) from None
    if not paths:
        raise click.ClickException(f"no audio files in {', '.join(inputs)}")
    keep_freed_memory_for_reuse()
    start = timer.perf_counter()
    try:
        with tqdm(total=len(paths), desc="infer", unit="file", disable=len(paths) < 2) as progress:
            failed, audio_seconds = run_inference(predictor, paths, out, fmt, plot, progress)
    except OutputError as error:
        raise click.ClickException(str(error)) from None
    seconds = timer.perf_counter() - start
    click.echo(f"wrote {len(paths) - len(failed)} file(s) to {out}: {audio_seconds:.1f} s of audio in "
               f"{seconds:.1f} s ({audio_seconds / max(seconds, 1e-9):.1f}x real time)")
    if failed:
        raise click.ClickException(f"{len(failed)} of {len(paths)} file(s) could not be read (listed above)")


if __name__ == "__main__":
    main()
