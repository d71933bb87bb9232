"""Audio files and their labels -> training items and batches: the dataset, its sampler, the collate, the loader."""
import multiprocessing
import os
import signal
import threading

import numpy as np
import torch

from audio import as_float32, load_audio
from f0_labels import cached_f0, label_settings
from features import float_wave, padded_crop, padded_samples
from pack import Pack
from synthetic import draw_synthetic_kind, pitch_shift_clip, render_world_utterance, resynthesis_clip
from synthetic_pool import SyntheticPool

REAL_VOICE_KINDS = {"pitch_shift": pitch_shift_clip, "resynthesis": resynthesis_clip}  # synthetic kinds made from a training clip


class SeededSampler(torch.utils.data.Sampler):
    """Yields (index, item_seed): every item's randomness comes from the main process.

    Crops, synthetic draws and augmentation then depend only on (seed, epoch, position) — not on
    which worker loads an item, how many workers there are, or whether the run was resumed.

    Distributed (torchrun): every rank draws the same global order and item seeds, cuts it into
    chunks of `batch_size` and takes chunks rank, rank + world_size, ...; one global batch is then
    exactly the batch of one process with batch_size · world_size, whatever the world size.
    `whole_batches` leaves out the epoch's last incomplete global batch, so every rank runs the same
    number of steps (training); without it the ranks share every item (validation).
    """

    def __init__(self, size, shuffle, seed, batch_size=1, rank=0, world_size=1, whole_batches=False):
        self.size, self.shuffle, self.seed, self.epoch, self.skip = size, shuffle, seed, 0, 0
        self.batch_size, self.rank, self.world_size, self.whole_batches = batch_size, rank, world_size, whole_batches

    def set_epoch(self, epoch, skip=0):
        """Draw epoch `epoch`'s order, leaving out its first `skip` items (already trained on, all ranks)."""
        self.epoch, self.skip = epoch, skip

    def positions(self):
        """Positions in the epoch's global order that this rank yields."""
        positions = range(self.skip, self.size)
        if self.whole_batches:
            group = self.batch_size * self.world_size
            positions = positions[: len(positions) // group * group]
        return [p for i, p in enumerate(positions) if i // self.batch_size % self.world_size == self.rank]

    def __len__(self):
        return len(self.positions())

    def __iter__(self):
        rng = np.random.default_rng([self.seed, self.epoch])
        order = rng.permutation(self.size) if self.shuffle else np.arange(self.size)
        item_seeds = rng.integers(0, 2**63 - 1, size=self.size)
        return iter([(int(order[p]), int(item_seeds[p])) for p in self.positions()])


class FileClips:
    """Audio files and their cached labels; an item decodes its whole file (fine for small data, a pack is faster)."""

    def __init__(self, paths, f0_params):
        self.paths = list(paths)
        self.labels = label_settings(f0_params)

    def __len__(self):
        return len(self.paths)

    def clip(self, index):
        """(float32 samples, F0 labels) of file `index`."""
        wave = load_audio(self.paths[index])
        return wave, cached_f0(self.paths[index], self.labels, audio=wave)


class MelDataset(torch.utils.data.Dataset):
    """Items of (waveform crop, f0 Hz (T,), voiced (T,), item seed) from a pack or from audio files.

    The crop holds the samples that mel frames [start, start + T) of the whole clip see, reflect-padded at
    the clip's edges (features.padded_crop); the training device augments a batch of them and turns it
    into mels (features.mel_from_padded), equal to the whole clip's mels. train=True: random crops of
    `max_mel_length` frames, synthetic blending as configured. train=False: whole clips, deterministic
    (synthetic only with apply_to_validation). `source`: a list of audio paths or a pack.Pack.
    With `pool_dir`, training draws synthetic items from a pre-rendered pool there (synthetic_pool.py;
    call `prepare_epoch(epoch)` before each epoch) instead of rendering them per item.
    """

    def __init__(self, source, dataset_params, train=True, pool_dir=None, seed=0):
        self.clips = source if isinstance(source, Pack) else FileClips(source, dataset_params["f0_params"])
        if not len(self.clips):
            raise ValueError("MelDataset: no usable audio files; check train_data / val_data lists")
        self.paths, self.labels = self.clips.paths, getattr(self.clips, "labels", None)
        self.params = dataset_params
        self.train = train
        self.max_frames = dataset_params["max_mel_length"] if train else None
        synth = dataset_params["synthetic_data"]
        self.synth = synth if synth["enabled"] and (train or synth["apply_to_validation"]) else None
        self.pool = SyntheticPool(pool_dir, synth, seed) if self.synth and train and pool_dir else None

    def __len__(self):
        return len(self.clips)

    def wave(self, index):
        """Clip `index` as float32."""
        samples, f0 = self.clips.clip(index)
        return as_float32(samples), f0

    def prepare_epoch(self, epoch):
        """Render the synthetic pool when `epoch` starts a new pool generation (no-op without a pool)."""
        if self.pool is not None:
            self.pool.refresh(epoch, self._synthetic_rendered)

    def _synthetic_rendered(self, rng):
        """A freshly rendered synthetic (wave, f0), whatever the blend proportion."""
        return self._synthetic(rng, draw_synthetic_kind(rng, dict(self.synth, proportion=1.0)))

    def _synthetic(self, rng, kind):
        if kind in REAL_VOICE_KINDS:
            for _ in range(3):  # a few tries: sources with too little voicing are skipped
                made = REAL_VOICE_KINDS[kind](*self.wave(rng.integers(len(self))), rng, self.synth[kind])
                if made is not None:
                    return made
            kind = "world" if self.synth["world"]["enabled"] else None
        if kind == "world":
            return render_world_utterance(rng, self.synth["world"])
        return None

    def __getitem__(self, key):
        index, item_seed = key if isinstance(key, tuple) else (key, key)
        rng = np.random.default_rng(item_seed)
        if self.pool is not None:
            synthetic = self.pool.draw(rng)
        else:
            synthetic = self.synth and self._synthetic(rng, draw_synthetic_kind(rng, self.synth))
        samples, f0 = synthetic or self.clips.clip(index)
        start, frames = 0, len(f0)
        if self.max_frames and len(f0) > self.max_frames:
            frames = self.max_frames
            start = int(rng.integers(len(f0) - frames + 1))
        f0 = torch.from_numpy(np.array(f0[start: start + frames], dtype=np.float32))
        return torch.from_numpy(padded_crop(samples, start, frames)), f0, f0 > 0, item_seed


def collate(items):
    """Pad to the longest item: wave (B, S) with zeros, f0 (B, T), voiced (B, T), valid (B, T), certain (B, T),
    seed (B,).

    `wave` stays int16 when every crop is (packs and the synthetic pool: half the bytes through the workers'
    shared memory and to the device; features.float_wave scales it there), else float32.

    Padding is never valid, so it reaches no loss and no metric; features.mel_from_padded gives its
    frames the mel of silence. An item's NaN F0 (an uncertain label) becomes 0 with `certain` False, which
    keeps it out of both losses and the metrics.
    """
    lengths = [f.shape[0] for _, f, _, _ in items]
    batch, frames = len(items), max(lengths)
    dtype = torch.int16 if all(w.dtype == torch.int16 for w, _, _, _ in items) else torch.float32
    wave = torch.empty(batch, padded_samples(frames), dtype=dtype)  # each row: its crop, then zeros
    f0 = torch.zeros(batch, frames)
    voiced = torch.zeros(batch, frames, dtype=torch.bool)
    for i, (w, f, v, _) in enumerate(items):
        wave[i, : w.shape[0]] = w if w.dtype == dtype else float_wave(w)
        wave[i, w.shape[0]:] = 0
        f0[i, : f.shape[0]], voiced[i, : f.shape[0]] = f, v
    certain = ~torch.isnan(f0)
    f0 = torch.nan_to_num_(f0, nan=0.0)
    valid = torch.arange(frames)[None, :] < torch.tensor(lengths)[:, None]
    seed = torch.tensor([item_seed for _, _, _, item_seed in items], dtype=torch.int64)
    return {"wave": wave, "f0": f0, "voiced": voiced, "valid": valid, "certain": certain, "seed": seed}


def loader_start_method(loader_params, labels, num_workers):
    """The configured start method, else `spawn` when a CUDA F0 backend may run in workers."""
    if loader_params["start_method"]:
        return loader_params["start_method"]
    if num_workers > 0 and labels is not None and labels.uses_cuda:
        return "spawn"  # CUDA cannot be re-initialised in a forked worker
    return None


def ignore_stop_signals(worker_id):
    """DataLoader workers ignore SIGINT and SIGTERM from outside: Ctrl-C, Slurm and pre-emption signal the whole
    process group, and a worker that died first would end the run before the main process saves last.pth.

    The main process itself still stops a worker with SIGTERM (multiprocessing does at exit, PyTorch when a
    worker does not finish in time): SIGTERM is blocked, and a thread takes it and ends the worker when the
    sender is its parent. A worker whose parent is gone exits by itself (PyTorch watches the parent).
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if not hasattr(signal, "sigwaitinfo"):  # not Linux: SIGTERM keeps its default
        return
    parent = os.getppid()
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # blocked, it is still queued for sigwaitinfo (Linux)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})  # threads started later inherit the mask

    def take_sigterm():
        while signal.sigwaitinfo({signal.SIGTERM}).si_pid != parent:
            pass  # a group-wide signal: the main process stops this worker once it has saved
        # terminate() from the parent (at its exit, or on a worker that did not stop in time). Status 0: PyTorch's
        # SIGCHLD check, still armed at interpreter exit, reports any other status as a crashed worker.
        os._exit(0)

    threading.Thread(target=take_sigterm, name="sigterm-from-parent", daemon=True).start()


def build_dataloader(dataset, batch_size, num_workers, seed, device, loader_params, shuffle=None, rank=0,
                     world_size=1):
    """DataLoader honouring `dataset_params.dataloader`; `loader.sampler.set_epoch(e)` each epoch.

    `rank`/`world_size`: this process's share of the data under torchrun (see SeededSampler).
    """
    shuffle = dataset.train if shuffle is None else shuffle
    drop_last = dataset.train and len(dataset) >= batch_size * world_size
    method = loader_start_method(loader_params, dataset.labels, num_workers)
    workers = {}
    if num_workers > 0:
        persistent = loader_params["persistent_workers"]
        workers = {"persistent_workers": True if persistent is None else bool(persistent),
                   "multiprocessing_context": multiprocessing.get_context(method) if method else None,
                   "worker_init_fn": ignore_stop_signals}
        if loader_params["prefetch_factor"] is not None:
            workers["prefetch_factor"] = int(loader_params["prefetch_factor"])
    pin = loader_params["pin_memory"]
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size,
        sampler=SeededSampler(len(dataset), shuffle, seed, batch_size, rank, world_size, whole_batches=drop_last),
        num_workers=num_workers, collate_fn=collate, drop_last=drop_last,
        # Its own generator: starting an epoch's iterator then draws nothing from torch's global RNG, which
        # dropout uses, so a resumed run's dropout masks are those of an uninterrupted one (items are seeded
        # by SeededSampler; this seed only reaches the workers' unused torch/random state).
        generator=torch.Generator().manual_seed(seed),
        pin_memory=str(device).startswith("cuda") if pin is None else bool(pin), **workers)
