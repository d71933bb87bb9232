"""Label-preserving augmentation, batched on the training device: noise (white, pink, babble), reverb,
band-limiting and gain. On the CPU the same code runs on the CPU.

None of these moves the pitch or the voicing, so labels stay as they are. Each item's random choices
come from its item seed (a numpy Generator on the host: a few numbers per item), and its noise is a
slice, at an offset drawn from that seed, of a noise bank held in device memory: white and pink noise
drawn from the run's seed, and babble talkers cut from training clips. An item's audio therefore depends
only on its seed and the bank: not on the batch it is in, the worker count or a resume.

    augment = build_augmenter(aug_params, babble_clips, seed, device)   # None when disabled
    waves = augment(waves, seeds, lengths)   # (B, S) float32 on the device, item seeds (B,), real samples (B,)

Transforms, in order, each with probability `probability`: reverb (a synthetic room: direct path, sparse
early reflections, exponentially decaying tail), noise at a random SNR relative to the item's RMS, a
zero-phase low-pass / high-pass / both (Butterworth magnitude squared, as a forward-backward filter),
gain; then the item is scaled down (never up) to peak <= 0.999. Lengths and time alignment are kept.

For single numpy clips (the demo corpus, synthetic data): add_noise, peak_limit, uniform, db_to_amplitude.
"""
import contextlib
import math
import random

import numpy as np
import torch

from audio import SAMPLE_RATE

NOISE_TYPES = ("white", "pink", "babble")
MAX_TALKERS = 4  # babble: 2..4 talkers
EARLY_REFLECTIONS = 6
_SEED_STREAM = 0x617567  # the augmentation's own stream of an item seed (the crop uses the seed itself)


# ---------------------------------------------------------------------------------------------- one clip (numpy)
# The demo corpus (demo_data.py) and the synthetic data (synthetic.py) use these on single clips; every
# random choice comes from the numpy Generator `rng` passed in.

def uniform(rng, bounds):
    lo, hi = float(bounds[0]), float(bounds[1])
    return lo if hi <= lo else float(rng.uniform(lo, hi))


def db_to_amplitude(db):
    return 10.0 ** (db / 20.0)


def rms(x):
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) if len(x) else 0.0


def peak_limit(audio, limit=0.999):
    """Scale down (never up) so that |audio| <= limit: no clipping beyond [-1, 1]."""
    peak = float(np.max(np.abs(audio))) if len(audio) else 0.0
    return audio * (limit / peak) if peak > limit else audio


@contextlib.contextmanager
def _global_random_from(rng):
    """Seed Python's and numpy's global generators (used inside audiomentations) from rng, and
    restore their previous states afterwards, so the result depends on rng alone."""
    python_state, numpy_state = random.getstate(), np.random.get_state()
    seed = int(rng.integers(2**32))
    random.seed(seed)
    np.random.seed(seed)
    try:
        yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)


_NOISE_DECAY_DB_PER_OCTAVE = {"white": 0.0, "pink": -3.01}


def _babble(rng, n_samples, babble_source):
    """Unit-RMS sum of 2-4 clips from babble_source (a list of arrays or a callable(rng) -> array),
    each looped or cropped to n_samples at a random offset."""
    mix = np.zeros(n_samples)
    for _ in range(int(rng.integers(2, 5))):
        if callable(babble_source):
            clip = np.asarray(babble_source(rng), dtype=np.float64).reshape(-1)
        else:
            clip = np.asarray(babble_source[int(rng.integers(len(babble_source)))], dtype=np.float64).reshape(-1)
        if len(clip) == 0 or rms(clip) == 0.0:
            continue
        start = int(rng.integers(len(clip)))
        clip = np.resize(np.roll(clip, -start), n_samples)  # loops short clips
        mix += clip / rms(clip)
    level = rms(mix)
    return mix / level if level > 0 else mix


def add_noise(audio, rng, snr_db, color="white", babble_source=None):
    """Add white, pink (audiomentations AddColorNoise) or babble noise at `snr_db` dB relative to
    the RMS of the whole clip. Same length and float32; not yet peak-limited."""
    audio = np.asarray(audio, dtype=np.float32)
    if color == "babble":
        if babble_source is None:
            raise ValueError("babble noise needs a babble_source (clips or callable(rng) -> clip)")
        noise = _babble(rng, len(audio), babble_source)
        return (audio + noise * (rms(audio) / db_to_amplitude(snr_db))).astype(np.float32)
    from audiomentations import AddColorNoise

    decay = _NOISE_DECAY_DB_PER_OCTAVE[color]
    transform = AddColorNoise(min_snr_db=snr_db, max_snr_db=snr_db, min_f_decay=decay,
                              max_f_decay=decay, p=1.0)
    with _global_random_from(rng):
        return transform(audio, SAMPLE_RATE).astype(np.float32)



# ---------------------------------------------------------------------------------------------- batches (torch)


def _unit_rms(x):
    return x / x.pow(2).mean().sqrt().clamp_min(1e-12)


def noise_bank(seconds, seed, babble_clips=()):
    """{'white', 'pink', and with clips 'babble'}: unit-RMS float32 signals of `seconds` (CPU tensors).

    Pink is the white bank shaped by 1/sqrt(f) (-3 dB per octave); babble talkers are the clips, each
    scaled to unit RMS, one after the other, looped to length.
    """
    n = int(seconds * SAMPLE_RATE)
    white = torch.randn(n, generator=torch.Generator().manual_seed(int(seed)), dtype=torch.float64)
    spectrum = torch.fft.rfft(white)
    freqs = torch.fft.rfftfreq(n, 1.0 / SAMPLE_RATE)
    spectrum = spectrum / freqs.clamp_min(freqs[1]).sqrt()
    spectrum[0] = 0.0
    bank = {"white": _unit_rms(white), "pink": _unit_rms(torch.fft.irfft(spectrum, n))}
    talkers = [_unit_rms(torch.as_tensor(np.asarray(c, dtype=np.float64))) for c in babble_clips
               if len(c) and float(np.abs(c).max()) > 0]
    if talkers:
        speech = torch.cat(talkers)
        bank["babble"] = speech.repeat(-(-n // len(speech)))[:n]
    return {kind: signal.float() for kind, signal in bank.items()}


def _slices(bank, offsets, length):
    """bank[offset : offset + length] for each offset (B,), the bank looped: (B, length)."""
    looped = bank.repeat(-(-(len(bank) + length) // len(bank)))
    return looped.unfold(0, length, 1)[offsets]


def _fft_size(n):
    return 1 << math.ceil(math.log2(n))


class Augmenter:
    """Batched augmentation on `device` (see the module docstring)."""

    def __init__(self, aug_params, bank, device):
        self.params = aug_params
        unknown = set(aug_params["noise_types"]) - set(NOISE_TYPES)
        if unknown:
            raise ValueError(f"augmentation.noise_types: unknown {sorted(unknown)}; use white, pink, babble")
        self.noise_types = [kind for kind in aug_params["noise_types"] if kind in bank]
        self.device = torch.device(device)
        self.bank = {kind: signal.to(self.device) for kind, signal in bank.items()}
        self.bank_length = len(bank["white"])
        self.rir_length = max(int(aug_params["reverb_rt60"][1] * SAMPLE_RATE), 64)
        self.band_choices = [(low, high) for low, high in ((True, False), (False, True), (True, True))
                             if (aug_params["lowpass_hz"] is not None or not low)
                             and (aug_params["highpass_hz"] is not None or not high)]

    # ------------------------------------------------------------------ per-item draws (host)
    def draw(self, seed):
        """The random choices of one item, from its seed alone: a dict of numbers."""
        p, params = float(self.params["probability"]), self.params
        rng = np.random.default_rng([int(seed) & (2**63 - 1), _SEED_STREAM])

        def uniform(bounds):
            lo, hi = (0.0, 0.0) if bounds is None else (float(bounds[0]), float(bounds[1]))
            return lo if hi <= lo else float(rng.uniform(lo, hi))

        d = {"reverb": bool(params["reverb"]) and rng.random() < p, "rt60": uniform(params["reverb_rt60"]),
             "drr_db": uniform((0.0, 15.0)), "predelay": int(uniform((0.002, 0.008)) * SAMPLE_RATE),
             "early_at": rng.integers(int(0.001 * SAMPLE_RATE), int(0.03 * SAMPLE_RATE), EARLY_REFLECTIONS),
             "early_gain": rng.uniform(-3.0, 3.0, EARLY_REFLECTIONS), "tail_at": int(rng.integers(self.bank_length))}
        d["noise"] = bool(self.noise_types) and params["snr_db_range"] is not None and rng.random() < p
        d["kind"] = self.noise_types[int(rng.integers(len(self.noise_types)))] if self.noise_types else "white"
        d["snr_db"] = uniform(params["snr_db_range"])
        d["talkers"] = int(rng.integers(2, MAX_TALKERS + 1))
        d["noise_at"] = rng.integers(self.bank_length, size=MAX_TALKERS)
        d["band"] = bool(params["band_limit"]) and bool(self.band_choices) and rng.random() < p
        d["low"], d["high"] = self.band_choices[int(rng.integers(len(self.band_choices)))] if self.band_choices \
            else (False, False)
        d["lowpass_hz"], d["low_order"] = uniform(params["lowpass_hz"]), int(rng.choice([2, 4]))
        d["highpass_hz"], d["high_order"] = uniform(params["highpass_hz"]), int(rng.choice([2, 4]))
        d["gain"] = params["gain_db_range"] is not None and rng.random() < p
        d["gain_db"] = uniform(params["gain_db_range"])
        return d

    # ------------------------------------------------------------------ batched transforms (device)
    def __call__(self, waves, seeds, lengths):
        draws = [self.draw(seed) for seed in seeds.tolist()]

        def column(key, dtype=torch.float32):
            return torch.tensor(np.array([d[key] for d in draws]), dtype=dtype, device=self.device)

        real = torch.arange(waves.shape[1], device=self.device)[None, :] < lengths.to(self.device)[:, None]
        x = waves * real
        x = torch.where(column("reverb", torch.bool)[:, None], self.reverb(x, column, real), x)
        x = torch.where(column("noise", torch.bool)[:, None], self.add_noise(x, draws, column, real), x)
        x = torch.where(column("band", torch.bool)[:, None], self.band_limit(x, column) * real, x)
        x = torch.where(column("gain", torch.bool)[:, None], x * 10.0 ** (column("gain_db")[:, None] / 20.0), x)
        peak = x.abs().amax(dim=1, keepdim=True)
        return x * torch.clamp(0.999 / peak.clamp_min(1e-12), max=1.0)

    @staticmethod
    def _rms(x, real):
        return (x.pow(2).sum(1, keepdim=True) / real.sum(1, keepdim=True).clamp_min(1)).sqrt()

    def reverb(self, x, column, real):
        """Convolve with a synthetic room response (direct path at sample 0: no delay); RMS kept."""
        n = self.rir_length
        t = torch.arange(n, device=self.device)[None, :]
        rt60 = column("rt60")[:, None] * SAMPLE_RATE
        tail = _slices(self.bank["white"], column("tail_at", torch.long), n)
        tail = tail * torch.exp(-6.908 * t / rt60) * (t < rt60) * (t >= column("predelay")[:, None])
        at = column("early_at", torch.long)
        early = column("early_gain") * torch.exp(-6.908 * at / rt60)
        tail = tail.scatter_add(1, at.clamp_max(n - 1), early)
        tail[:, 0] = 0.0
        energy = tail.pow(2).sum(1, keepdim=True).clamp_min(1e-12)
        tail = tail * torch.sqrt(10.0 ** (-column("drr_db")[:, None] / 10.0) / energy)
        tail[:, 0] = 1.0
        size = _fft_size(x.shape[1] + n)
        wet = torch.fft.irfft(torch.fft.rfft(x, size) * torch.fft.rfft(tail, size), size)[:, : x.shape[1]] * real
        return wet * (self._rms(x, real) / self._rms(wet, real).clamp_min(1e-12))

    def add_noise(self, x, draws, column, real):
        """Add white, pink or babble noise at the item's SNR relative to its RMS (over its real samples)."""
        length = x.shape[1]
        kinds = [d["kind"] for d in draws]
        offsets = column("noise_at", torch.long)
        noise = torch.zeros_like(x)
        for kind in set(kinds):
            rows = torch.tensor([i for i, k in enumerate(kinds) if k == kind], device=self.device)
            talkers = MAX_TALKERS if kind == "babble" else 1
            parts = torch.stack([_slices(self.bank[kind], offsets[rows, k], length) for k in range(talkers)], 1)
            if kind == "babble":
                parts = parts * (torch.arange(MAX_TALKERS, device=self.device)[None, :]
                                 < column("talkers", torch.long)[rows, None])[..., None]
            noise[rows] = parts.sum(1)
        noise = noise * real
        scale = self._rms(x, real) / (10.0 ** (column("snr_db")[:, None] / 20.0) * self._rms(noise, real).clamp_min(1e-12))
        return x + noise * scale

    def band_limit(self, x, column):
        """Zero-phase low-pass, high-pass or both at the items' cutoffs (|H|^2 of a Butterworth filter)."""
        size = _fft_size(x.shape[1] + 4096)  # room for the filters' ringing, so nothing wraps around
        f = torch.fft.rfftfreq(size, 1.0 / SAMPLE_RATE, device=self.device)[None, :]
        low = 1.0 / (1.0 + (f / column("lowpass_hz").clamp_min(1.0)[:, None]) ** (2 * column("low_order")[:, None]))
        high = 1.0 / (1.0 + (column("highpass_hz")[:, None] / f.clamp_min(1e-3)) ** (2 * column("high_order")[:, None]))
        gain = torch.where(column("low", torch.bool)[:, None], low, 1.0) * \
            torch.where(column("high", torch.bool)[:, None], high, 1.0)
        return torch.fft.irfft(torch.fft.rfft(x, size) * gain, size)[:, : x.shape[1]]


def build_augmenter(aug_params, babble_clips, seed, device):
    """The Augmenter for the `augmentation` config block, or None with `enabled: false`.

    babble_clips: 24 kHz training clips for babble noise (without them babble is left out of the types).
    """
    if not aug_params["enabled"]:
        return None
    return Augmenter(aug_params, noise_bank(aug_params["noise_bank_seconds"], seed, babble_clips), device)
