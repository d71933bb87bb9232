"""Packed training data: a list's audio, resampled once to 24 kHz int16, in one memory-mappable array, with
an index and the F0 labels on the model grid, so a training item is a slice (no decoding, no resampling).

A pack is a folder:
    pack.json               format version, label-settings hash, the data file names, one entry per clip:
                            source path, size and mtime_ns, sample and frame offsets, crc32 of its audio
                            and of its labels
    audio-<id>.int16        int16 (total samples,): every clip at 24 kHz, one after the other
    labels-<id>.float32     float32 (total frames,): F0 in Hz on the model grid, 0 = unvoiced, NaN = uncertain
A build writes the data files under fresh names, then pack.json (atomically), then removes the old data
files, so a reader sees the old pack or the new one, never half of one. Rebuilding re-reads only sources
whose size, mtime or labels changed; the other clips are copied from the old pack. int16 is exact for
16-bit 24 kHz sources; other sources are quantised once (error <= 2**-16 of full scale).

    python pack.py build LIST PACK --config_path Configs/config.yml [--workers N]
    python pack.py verify PACK
    python pack.py compress PACK OPUS_PACK [--kbps 24]     # to move it: ~15x smaller
    python pack.py expand OPUS_PACK PACK                   # on the other machine

An Opus pack (opus-pack.json, audio-<id>.opus, labels-<id>.float32) holds each clip as Ogg Opus and the labels
unchanged, with checksums of both; `expand` decodes it into a pack of the original clip lengths. Training data
must reach a GPU machine in tens of MB: the speech recipe's 215 training minutes are ~620 MB as a pack.
"""
import io
import json
import os
import sys
import uuid
import zlib

import click
import numpy as np
import soundfile as sf

from audio import (INT16_SCALE, AudioError, SAMPLE_RATE, as_float32, load_audio, num_frames, read_file_list,
                   write_atomically)

PACK_FORMAT = 1
MANIFEST = "pack.json"
OPUS_PACK_FORMAT = 1
OPUS_MANIFEST = "opus-pack.json"
DEFAULT_KBPS = 24.0


class PackError(ValueError):
    """A pack that cannot be read; the message is one line naming the pack, the problem and the fix."""


def is_pack(path):
    return os.path.isfile(os.path.join(os.fspath(path), MANIFEST))


def _crc(array):
    return zlib.crc32(np.ascontiguousarray(array).tobytes())


def _identity(path):
    stat = os.stat(path)
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


class Pack:
    """An opened pack: `len(pack)`, `pack.paths`, `pack.clip(i) -> (int16 memmap view, float32 labels)`.

    Opening checks the manifest, its version and the data files' sizes (a one-line PackError otherwise);
    `verify()` also checks every clip's checksums. Picklable: workers re-map the files themselves.
    """


    def __init__(self, folder):
        self.folder = os.fspath(folder)
        fix = f"rebuild it with `python pack.py build LIST {self.folder}`"
        try:
            with open(os.path.join(self.folder, MANIFEST), encoding="utf-8") as handle:
                manifest = json.load(handle)
        except FileNotFoundError:
            raise PackError(f"{self.folder}: no {MANIFEST}, so not a pack; {fix}") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise PackError(f"{self.folder}: damaged {MANIFEST} ({error}); {fix}") from None
        if manifest.get("format") != PACK_FORMAT:
            raise PackError(f"{self.folder}: pack format {manifest.get('format')!r}, this code reads "
                            f"{PACK_FORMAT}; {fix}")
        self.manifest, self.entries = manifest, manifest["entries"]
        self.paths = [entry["path"] for entry in self.entries]
        self.label_hash = manifest["label_hash"]
        samples = sum(entry["samples"] for entry in self.entries)
        frames = sum(entry["frames"] for entry in self.entries)
        for name, count, itemsize in ((manifest["audio"], samples, 2), (manifest["labels"], frames, 4)):
            path = os.path.join(self.folder, name)
            size = os.path.getsize(path) if os.path.isfile(path) else None
            if size != count * itemsize:
                raise PackError(f"{path}: {'missing' if size is None else f'{size} bytes'}, the index expects "
                                f"{count * itemsize}; the pack is damaged, {fix}")
        self._fix = fix
        self._arrays = None

    def __len__(self):
        return len(self.entries)

    def __getstate__(self):
        return {**self.__dict__, "_arrays": None}

    def _mapped(self):
        if self._arrays is None:
            # Plain ndarray views of the maps: slicing them costs less than slicing np.memmap objects. Copy-on-write
            # ("c"): the views are writable, so torch.from_numpy takes a crop without copying it, and no write can
            # ever reach the file (nor should any happen: it would change this process's later reads of the clip).
            self._arrays = tuple(np.asarray(np.memmap(os.path.join(self.folder, self.manifest[key]), dtype=dtype,
                                                      mode="c"))
                                 for key, dtype in (("audio", np.int16), ("labels", np.float32)))
        return self._arrays

    def clip(self, index):
        """(int16 samples, float32 labels) of clip `index`: views into the mapped files, read lazily."""
        entry = self.entries[index]
        audio, labels = self._mapped()
        return (audio[entry["sample_offset"]: entry["sample_offset"] + entry["samples"]],
                labels[entry["frame_offset"]: entry["frame_offset"] + entry["frames"]])

    def verify(self):
        """Check every clip's audio and label checksums; a one-line PackError names the first bad clip."""
        for index, entry in enumerate(self.entries):
            audio, labels = self.clip(index)
            if _crc(audio) != entry["audio_crc"] or _crc(labels) != entry["labels_crc"]:
                raise PackError(f"{self.folder}: clip {index} ({entry['path']}) fails its checksum; the pack is "
                                f"damaged, {self._fix}")
        return len(self.entries)


def to_int16(wave):
    """24 kHz float audio -> int16 PCM, the inverse of soundfile's scaling (exact for 16-bit sources)."""
    return np.clip(np.round(np.asarray(wave, dtype=np.float64) * INT16_SCALE), -32768, 32767).astype(np.int16)


def _stream_to(path, chunks):
    """Write byte chunks to `path` via a temporary file and a rename."""
    temporary = f"{path}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        with open(temporary, "xb") as handle:
            for chunk in chunks:
                handle.write(chunk)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise


def write_pack(folder, clips, label_hash):
    """Write a pack of `clips`: iterable of (path, identity dict, int16 audio, float32 labels). Returns the Pack.

    Data files get fresh names; pack.json is replaced last; data files of the previous pack are removed.
    """
    os.makedirs(folder, exist_ok=True)
    build = uuid.uuid4().hex[:12]
    names = {"audio": f"audio-{build}.int16", "labels": f"labels-{build}.float32"}
    entries, labels_parts = [], []
    sample_offset = frame_offset = 0

    def audio_chunks():
        nonlocal sample_offset, frame_offset
        for path, identity, audio, labels in clips:
            audio, labels = np.ascontiguousarray(audio, np.int16), np.ascontiguousarray(labels, np.float32)
            entries.append({"path": path, **identity, "sample_offset": sample_offset, "samples": int(audio.size),
                            "frame_offset": frame_offset, "frames": int(labels.size),
                            "audio_crc": _crc(audio), "labels_crc": _crc(labels)})
            sample_offset += audio.size
            frame_offset += labels.size
            labels_parts.append(labels.tobytes())
            yield audio.tobytes()

    _stream_to(os.path.join(folder, names["audio"]), audio_chunks())
    _stream_to(os.path.join(folder, names["labels"]), labels_parts)
    manifest = {"format": PACK_FORMAT, "sample_rate": SAMPLE_RATE, "label_hash": label_hash, **names,
                "entries": entries}
    write_atomically(os.path.join(folder, MANIFEST), json.dumps(manifest, indent=1).encode())
    for name in os.listdir(folder):
        if name.startswith(("audio-", "labels-")) and name not in names.values():
            os.remove(os.path.join(folder, name))
    return Pack(folder)


def build_pack(paths, folder, labels, workers=None, strict=False):
    """Pack `paths` (labelled with LabelSettings `labels`) into `folder`; returns (Pack, counts).

    Sources unchanged since the previous pack in `folder` (same size, mtime and label settings) are copied
    from it; the others are decoded, resampled and labelled. Unreadable audio is reported and left out.
    counts: {'packed': re-read, 'reused': copied, 'skipped': unreadable}.
    """
    from f0_labels import cached_f0, precompute  # the labelling stack only where packs are built

    try:
        old = Pack(folder) if is_pack(folder) else None
        old_entries = {os.path.abspath(e["path"]): (i, e) for i, e in enumerate(old.entries)} if old else {}
        if old and old.label_hash != labels.hash:
            old_entries = {}
    except PackError:
        old, old_entries = None, {}  # a damaged pack is rebuilt from its sources
    counts = {"packed": 0, "reused": 0, "skipped": 0}
    todo = []
    for path in paths:
        previous = old_entries.get(os.path.abspath(path))
        if not (previous and os.path.isfile(path) and _identity(path) == {k: previous[1][k] for k in ("size", "mtime_ns")}):
            todo.append(path)
    bad = set(precompute(todo, labels, workers=workers, strict=strict)["bad_files"]) if todo else set()

    def clips():
        for path in paths:
            if path in bad:
                counts["skipped"] += 1
                continue
            previous = old_entries.get(os.path.abspath(path))
            if path not in todo:
                audio, f0 = old.clip(previous[0])
                counts["reused"] += 1
                yield path, {"size": previous[1]["size"], "mtime_ns": previous[1]["mtime_ns"]}, audio, f0
                continue
            try:
                wave = load_audio(path)
            except AudioError:
                counts["skipped"] += 1
                continue
            f0 = cached_f0(path, labels, audio=wave)
            if len(f0) != num_frames(len(wave)):
                raise PackError(f"{path}: {len(f0)} label frames for {num_frames(len(wave))} audio frames")
            counts["packed"] += 1
            yield path, _identity(path), to_int16(wave), f0

    return write_pack(folder, clips(), labels.hash), counts


def opus_level(kbps):
    """libsndfile's Opus compression level for a target bitrate: it maps levels 0..1 linearly onto 256..6 kbps."""
    return min(1.0, max(0.0, 1.0 - (kbps - 6.0) / 250.0))


_encoder_pack = None  # the Pack an encoding worker reads, opened once per worker process


def _open_encoder_pack(folder):
    global _encoder_pack
    _encoder_pack = Pack(folder)


def _encode_opus(job):
    """Ogg Opus bytes of clip `index` of the worker's pack at about `kbps`."""
    index, kbps = job
    buffer = io.BytesIO()
    sf.write(buffer, as_float32(_encoder_pack.clip(index)[0]), SAMPLE_RATE, format="OGG", subtype="OPUS",
             compression_level=opus_level(kbps))
    return buffer.getvalue()


def compress_pack(source, folder, kbps=DEFAULT_KBPS, workers=None):
    """Write the Pack `source` to `folder` as an Opus pack: each clip as Ogg Opus at about `kbps` (speech keeps its
    pitch; the bytes shrink ~12x at 24 kbps) and its labels unchanged, for moving training data to another
    machine. Clips are encoded by `workers` processes (default: all cores), ~20x real time each. Written as a
    pack is (fresh data file names, manifest last). Returns the compressed bytes."""
    import multiprocessing

    os.makedirs(folder, exist_ok=True)
    build = uuid.uuid4().hex[:12]
    names = {"opus": f"audio-{build}.opus", "labels": f"labels-{build}.float32"}
    entries, labels_parts, offset = [], [], 0

    def blobs():
        nonlocal offset
        jobs = [(index, kbps) for index in range(len(source))]
        context = multiprocessing.get_context("fork" if sys.platform.startswith("linux") else None)
        with context.Pool(workers or len(os.sched_getaffinity(0)), _open_encoder_pack, (source.folder,)) as pool:
            for entry, (_, labels), blob in zip(source.entries, map(source.clip, range(len(source))),
                                                pool.imap(_encode_opus, jobs, chunksize=16)):
                entries.append({key: entry[key] for key in ("path", "size", "mtime_ns", "samples", "frames")}
                               | {"byte_offset": offset, "bytes": len(blob), "opus_crc": zlib.crc32(blob),
                                  "labels_crc": _crc(labels)})
                offset += len(blob)
                labels_parts.append(np.ascontiguousarray(labels).tobytes())
                yield blob

    _stream_to(os.path.join(folder, names["opus"]), blobs())
    _stream_to(os.path.join(folder, names["labels"]), labels_parts)
    manifest = {"format": OPUS_PACK_FORMAT, "sample_rate": SAMPLE_RATE, "kbps": kbps, "label_hash": source.label_hash,
                **names, "entries": entries}
    write_atomically(os.path.join(folder, OPUS_MANIFEST), json.dumps(manifest, indent=1).encode())
    for name in os.listdir(folder):
        if name.startswith(("audio-", "labels-")) and name not in names.values():
            os.remove(os.path.join(folder, name))
    return offset


def expand_pack(folder, out):
    """Decode the Opus pack in `folder` into a regular pack at `out`: every clip at its original length as int16,
    its labels as they were (they were computed on the original audio). A damaged Opus pack is a one-line
    PackError. Returns the Pack."""
    folder = os.fspath(folder)
    fix = f"compress it again with `python pack.py compress PACK {folder}`"
    try:
        with open(os.path.join(folder, OPUS_MANIFEST), encoding="utf-8") as handle:
            manifest = json.load(handle)
    except FileNotFoundError:
        raise PackError(f"{folder}: no {OPUS_MANIFEST}, so not an Opus pack; {fix}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise PackError(f"{folder}: damaged {OPUS_MANIFEST} ({error}); {fix}") from None
    if manifest.get("format") != OPUS_PACK_FORMAT:
        raise PackError(f"{folder}: Opus pack format {manifest.get('format')!r}, this code reads {OPUS_PACK_FORMAT}; {fix}")
    with open(os.path.join(folder, manifest["opus"]), "rb") as handle:
        opus = handle.read()
    labels = np.fromfile(os.path.join(folder, manifest["labels"]), dtype=np.float32)

    def clips():
        frame_offset = 0
        for entry in manifest["entries"]:
            blob = opus[entry["byte_offset"]: entry["byte_offset"] + entry["bytes"]]
            f0 = labels[frame_offset: frame_offset + entry["frames"]]
            frame_offset += entry["frames"]
            if zlib.crc32(blob) != entry["opus_crc"] or len(f0) != entry["frames"] or _crc(f0) != entry["labels_crc"]:
                raise PackError(f"{folder}: clip {entry['path']} fails its checksum; the Opus pack is damaged, {fix}")
            decoded, _ = sf.read(io.BytesIO(blob), dtype="float32")
            samples = np.zeros(entry["samples"], np.int16)  # the original length, whatever the codec's padding
            kept = min(len(decoded), entry["samples"])
            samples[:kept] = to_int16(decoded[:kept])
            yield entry["path"], {"size": entry["size"], "mtime_ns": entry["mtime_ns"]}, samples, f0

    return write_pack(out, clips(), manifest["label_hash"])


@click.group()
def main():
    """Build or verify a pack of training data (see the module docstring)."""


@main.command()
@click.argument("list_file", type=click.Path())
@click.argument("folder", type=click.Path(file_okay=False))
@click.option("--config_path", "-p", default="Configs/config.yml", show_default=True,
              help="config whose dataset_params.f0_params label the clips")
@click.option("--workers", type=int, default=None, help="labelling processes [default: all cores]")
def build(list_file, folder, config_path, workers):
    """Pack the audio of LIST_FILE (`filename|anything` lines) into the pack folder FOLDER."""
    from config import ConfigError, load_config
    from f0_labels import label_settings

    try:
        config = load_config(config_path, ())
        data = config["dataset_params"]
        pack, counts = build_pack(read_file_list(list_file), folder, label_settings(data["f0_params"]), workers,
                                  data["strict"])
    except (ConfigError, PackError, AudioError, FileNotFoundError, RuntimeError, ValueError) as error:
        raise click.ClickException(str(error)) from None
    hours = sum(e["samples"] for e in pack.entries) / SAMPLE_RATE / 3600
    click.echo(f"{folder}: {len(pack)} clips, {hours:.2f} h ({counts['packed']} packed, {counts['reused']} "
               f"unchanged, {counts['skipped']} unreadable and left out)")


@main.command()
@click.argument("folder", type=click.Path(file_okay=False))
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--kbps", type=click.FloatRange(min=6.0, max=256.0), default=DEFAULT_KBPS, show_default=True,
              help="Opus bitrate per clip")
@click.option("--workers", type=click.IntRange(min=1), default=None, help="encoding processes [default: all cores]")
def compress(folder, out, kbps, workers):
    """Write the pack FOLDER as an Opus pack OUT, to move training data (e.g. to a GPU machine)."""
    try:
        source = Pack(folder)
        total = compress_pack(source, out, kbps, workers)
    except PackError as error:
        raise click.ClickException(str(error)) from None
    labels = sum(entry["frames"] for entry in source.entries) * 4
    audio = sum(entry["samples"] for entry in source.entries) * 2
    click.echo(f"{out}: {len(source)} clips, {(total + labels) / 2**20:.1f} MiB ({(audio + labels) / 2**20:.1f} MiB "
               "as a pack)")


@main.command()
@click.argument("folder", type=click.Path(file_okay=False))
@click.argument("out", type=click.Path(file_okay=False))
def expand(folder, out):
    """Decode the Opus pack FOLDER into a pack OUT that train_data can name."""
    try:
        expanded = expand_pack(folder, out)
    except (PackError, OSError, sf.LibsndfileError) as error:
        raise click.ClickException(str(error).splitlines()[0] if str(error) else repr(error)) from None
    click.echo(f"{out}: {len(expanded)} clips, {sum(e['samples'] for e in expanded.entries) / SAMPLE_RATE / 3600:.2f} h")


@main.command()
@click.argument("folder", type=click.Path())
def verify(folder):
    """Check the pack in FOLDER: manifest, data file sizes, every clip's checksums."""
    try:
        count = Pack(folder).verify()
    except PackError as error:
        raise click.ClickException(str(error)) from None
    click.echo(f"{folder}: {count} clips, all checksums match")


if __name__ == "__main__":
    main()
