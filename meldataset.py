"""Audio files and their labels -> training items and batches: the dataset, its sampler, the collate, the loader."""
import multiprocessing

import numpy as np
import torch

from augment import build_augmenter
from f0_labels import cached_f0, label_settings
from features import N_MELS, PAD_MEL, crop_wave, item_mels
from audio import load_audio
from synthetic import draw_synthetic_kind, pitch_shift_clip, render_world_utterance


class SeededSampler(torch.utils.data.Sampler):
    """Yields (index, item_seed): every item's randomness comes from the main process.

    Crops, synthetic draws and augmentation then depend only on (seed, epoch, position) — not on
    which worker loads an item, how many workers there are, or whether the run was resumed.
    """

    def __init__(self, size, shuffle, seed):
        self.size, self.shuffle, self.seed, self.epoch, self.skip = size, shuffle, seed, 0, 0

    def set_epoch(self, epoch, skip=0):
        """Draw epoch `epoch`'s order, leaving out its first `skip` items (already trained on)."""
        self.epoch, self.skip = epoch, skip

    def __len__(self):
        return self.size - self.skip

    def __iter__(self):
        rng = np.random.default_rng([self.seed, self.epoch])
        order = rng.permutation(self.size) if self.shuffle else np.arange(self.size)
        item_seeds = rng.integers(0, 2**63 - 1, size=self.size)
        return iter(list(zip(order.tolist(), item_seeds.tolist()))[self.skip:])


class MelDataset(torch.utils.data.Dataset):
    """Items of (mel (80, T), f0 Hz (T,), voiced (T,)) from audio files and their cached F0 labels.

    train=True: random crops of `max_mel_length` frames, synthetic blending and augmentation as
    configured. train=False: whole clips, deterministic (synthetic only with apply_to_validation).
    """

    def __init__(self, audio_paths, dataset_params, train=True):
        self.paths = list(audio_paths)
        if not self.paths:
            raise ValueError("MelDataset: no usable audio files; check train_data / val_data lists")
        self.params = dataset_params
        self.labels = label_settings(dataset_params["f0_params"])
        self.train = train
        self.max_frames = dataset_params["max_mel_length"] if train else None
        synth = dataset_params["synthetic_data"]
        self.synth = synth if synth["enabled"] and (train or synth["apply_to_validation"]) else None
        aug = dataset_params["augmentation"]
        self.augment = build_augmenter(aug, self._random_clip) if aug["enabled"] and train else None

    def __len__(self):
        return len(self.paths)

    def load(self, index):
        path = self.paths[index]
        wave = load_audio(path)
        return wave, cached_f0(path, self.labels, audio=wave)

    def _random_clip(self, rng):
        """A random training clip (babble noise source)."""
        return load_audio(self.paths[rng.integers(len(self.paths))])

    def _synthetic(self, rng):
        kind = draw_synthetic_kind(rng, self.synth)
        if kind == "pitch_shift":
            for _ in range(3):  # a few tries: sources with too little voicing are skipped
                shifted = pitch_shift_clip(*self.load(rng.integers(len(self.paths))), rng, self.synth["pitch_shift"])
                if shifted is not None:
                    return shifted
            kind = "world" if self.synth["world"]["enabled"] else None
        if kind == "world":
            return render_world_utterance(rng, self.synth["world"])
        return None

    def __getitem__(self, key):
        index, item_seed = key if isinstance(key, tuple) else (key, key)
        rng = np.random.default_rng(item_seed)
        wave_f0 = self._synthetic(rng) if self.synth else None
        wave, f0 = wave_f0 if wave_f0 is not None else self.load(index)
        start, frames = 0, len(f0)
        if self.max_frames and len(f0) > self.max_frames:
            frames = self.max_frames
            start = int(rng.integers(len(f0) - frames + 1))
        f0 = torch.from_numpy(np.array(f0[start: start + frames], dtype=np.float32))
        if self.augment is not None:
            wave, start = crop_wave(wave, start, frames)  # augment only the samples used
            wave = self.augment(wave, rng)
        return item_mels(wave, start, frames), f0, f0 > 0


def collate(items):
    """Pad to the longest item: mel (B, 1, 80, T), f0 (B, T), voiced (B, T), valid (B, T).

    Padding is silence in the mel and never valid, so it reaches no loss and no metric.
    """
    lengths = torch.tensor([len(f0) for _, f0, _ in items])
    batch, frames = len(items), int(lengths.max())
    mel = torch.full((batch, 1, N_MELS, frames), PAD_MEL)
    f0 = torch.zeros(batch, frames)
    voiced = torch.zeros(batch, frames, dtype=torch.bool)
    for i, (m, f, v) in enumerate(items):
        mel[i, 0, :, : len(f)], f0[i, : len(f)], voiced[i, : len(f)] = m, f, v
    valid = torch.arange(frames)[None, :] < lengths[:, None]
    return {"mel": mel, "f0": f0, "voiced": voiced, "valid": valid}


def loader_start_method(loader_params, labels, num_workers):
    """The configured start method, else `spawn` when a CUDA F0 backend may run in workers."""
    if loader_params["start_method"]:
        return loader_params["start_method"]
    if num_workers > 0 and labels.uses_cuda:
        return "spawn"  # CUDA cannot be re-initialised in a forked worker
    return None


def build_dataloader(dataset, batch_size, num_workers, seed, device, loader_params, shuffle=None):
    """DataLoader honouring `dataset_params.dataloader`; `loader.sampler.set_epoch(e)` each epoch."""
    shuffle = dataset.train if shuffle is None else shuffle
    method = loader_start_method(loader_params, dataset.labels, num_workers)
    workers = {}
    if num_workers > 0:
        persistent = loader_params["persistent_workers"]
        workers = {"persistent_workers": True if persistent is None else bool(persistent),
                   "multiprocessing_context": multiprocessing.get_context(method) if method else None}
        if loader_params["prefetch_factor"] is not None:
            workers["prefetch_factor"] = int(loader_params["prefetch_factor"])
    pin = loader_params["pin_memory"]
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, sampler=SeededSampler(len(dataset), shuffle, seed),
        num_workers=num_workers, collate_fn=collate, drop_last=dataset.train and len(dataset) >= batch_size,
        pin_memory=str(device).startswith("cuda") if pin is None else bool(pin), **workers)
