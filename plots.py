"""Figures of F0 contours: infer.py's --plot PNGs and the trainer's TensorBoard validation figure.

matplotlib's object API only (no pyplot): no global backend state, and Agg renders when a figure is saved.
"""
import numpy as np
import torch

from audio import FRAME_SECONDS, HOP_LENGTH, SAMPLE_RATE, num_frames
from features import N_FFT, WIN_LENGTH, crop_wave
from model import voiced

SPECTROGRAM_BLOCK_FRAMES = 8000  # 100 s of frames per STFT call keeps plotting hour-long files in memory


def low_band_spectrogram(wave, n_bins):
    """|STFT| in dB of the lowest n_bins bins, on the model grid (the mels' window, n_fft and hop);
    computed a block of frames at a time, with crop_wave supplying each block's context."""
    total, blocks = num_frames(len(wave)), []
    window = torch.hann_window(WIN_LENGTH)
    for start in range(0, total, SPECTROGRAM_BLOCK_FRAMES):
        frames = min(SPECTROGRAM_BLOCK_FRAMES, total - start)
        segment, offset = crop_wave(wave, start, frames)
        spectrum = torch.stft(torch.from_numpy(segment), N_FFT, HOP_LENGTH, WIN_LENGTH, window, pad_mode="constant",
                              return_complex=True)
        blocks.append(spectrum[:n_bins, offset: offset + frames].abs())
    return 20 * torch.log10(torch.cat(blocks, dim=1) + 1e-6).numpy()


def f0_figure(clips, vuv_threshold):
    """One Figure, two panels per clip: the predicted F0 (solid where voiced, dotted where not) over the
    clip's low-band spectrogram when it has a `wave`, with its `label` F0 when it has one; P(voiced) and
    the threshold below.

    clips: dicts with `title`, `f0` (Hz per frame), `prob` (P(voiced) per frame), optional `wave` (24 kHz)
    and `label` (Hz per frame, 0 = unvoiced, NaN = uncertain).
    """
    from matplotlib.figure import Figure

    longest = max(len(clip["f0"]) for clip in clips) * FRAME_SECONDS
    fig = Figure(figsize=(float(np.clip(2 + longest, 6, 40)), 5 * len(clips)))
    axes = fig.subplots(2 * len(clips), 1, squeeze=False, gridspec_kw={"height_ratios": [4, 1] * len(clips)})[:, 0]
    for clip, contour_axes, prob_axes in zip(clips, axes[0::2], axes[1::2]):
        f0, prob = np.asarray(clip["f0"]), np.asarray(clip["prob"])
        is_voiced = voiced(prob, vuv_threshold)
        time = np.arange(f0.size) * FRAME_SECONDS
        end = f0.size * FRAME_SECONDS
        top_hz = float(np.clip(1.5 * (f0[is_voiced].max() if is_voiced.any() else 400.0), 500.0, 4000.0))
        if clip.get("wave") is not None:
            spectrogram = low_band_spectrogram(clip["wave"], int(np.ceil(top_hz * N_FFT / SAMPLE_RATE)) + 1)
            contour_axes.imshow(spectrogram, origin="lower", aspect="auto", cmap="magma",
                                extent=(0, end, 0, spectrogram.shape[0] * SAMPLE_RATE / N_FFT),
                                vmin=spectrogram.max() - 80, vmax=spectrogram.max())
        if clip.get("label") is not None:
            label = np.asarray(clip["label"], dtype=np.float64)
            contour_axes.plot(time, np.where(label > 0, label, np.nan), "k", lw=2, label="label F0")
        colour = "cyan" if clip.get("wave") is not None else "r"
        contour_axes.plot(time, np.where(is_voiced, np.nan, f0), ":", color=colour, lw=0.8, label="F0 (unvoiced)")
        contour_axes.plot(time, np.where(is_voiced, f0, np.nan), "-", color=colour, lw=1.5, label="F0 (voiced)")
        contour_axes.set(xlim=(0, end), ylim=(0, top_hz), ylabel="Hz", title=clip["title"])
        contour_axes.legend(loc="upper right", fontsize=7)
        prob_axes.plot(time, prob, "k", lw=0.8)
        prob_axes.axhline(vuv_threshold, color="r", lw=0.6, ls="--")
        prob_axes.set(xlim=(0, end), ylim=(0, 1), ylabel="P(voiced)", xlabel="s")
    fig.tight_layout()
    return fig
