"""The CUDA paths, run for real on a GPU: fp16 AMP with GradScaler, bf16 autocast, gradient
checkpointing (same gradients, less memory), torchcrepe labelling on CUDA inside spawned DataLoader
workers, and inference. Skipped on machines without a CUDA GPU (CI); their CPU-side logic is covered by
test_trainer.py, test_meldataset.py and test_f0_backends.py."""
import copy

import numpy as np
import pytest
import torch

from audio import load_audio
from config import load_config
from conftest import glide_clip, tiny_config
from f0_helpers import cents
from f0_labels import cache_paths, compute_f0
from infer import load_predictor
from meldataset import MelDataset, build_dataloader
from model import build_model
from train import prepare_labels
from trainer import Trainer

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
DEVICE = "cuda"


@pytest.mark.parametrize("amp_dtype", ["float16", "bfloat16"])
def test_amp_training_learns_with_fp32_master_weights(tmp_path, amp_dtype):
    config = load_config(tiny_config(tmp_path, device=DEVICE, epochs=4,
                                     training={"mixed_precision": True, "amp_dtype": amp_dtype}))
    trainer = Trainer(config, config["log_dir"], prepare_labels(config))
    assert trainer.amp and trainer.amp_dtype == getattr(torch, amp_dtype)
    assert trainer.scaler.is_enabled() == (amp_dtype == "float16")  # bf16 needs no loss scaling
    losses = [trainer.train_epoch(epoch) for epoch in range(4)]
    assert np.all(np.isfinite(losses)) and losses[-1] < 0.8 * losses[0], losses
    assert trainer.nonfinite_total == 0
    assert all(p.dtype == torch.float32 and p.is_cuda for p in trainer.model.parameters())
    metrics = trainer.validate()
    assert np.isfinite(metrics["RPA"]) and 0 < trainer.vuv_threshold < 1


@pytest.mark.parametrize("kind", ["lstm", "transformer"])
def test_gradient_checkpointing_same_gradients_less_memory(kind):
    torch.manual_seed(0)
    model = build_model({"sequence_model": kind, "cnn_dropout": 0.0,
                         "transformer": {"dropout": 0.0}}).to(DEVICE).train()
    x = torch.randn(16, 1, 80, 192, device=DEVICE)

    def grads_and_peak_memory():
        model.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        f0, logit = model(x)
        (f0.mean() + logit.mean()).backward()
        torch.cuda.synchronize()
        return [p.grad.clone() for p in model.parameters()], torch.cuda.max_memory_allocated()

    plain, plain_peak = grads_and_peak_memory()
    model.set_gradient_checkpointing(True)
    checkpointed, checkpointed_peak = grads_and_peak_memory()
    for a, b in zip(plain, checkpointed):
        assert torch.allclose(a, b, rtol=1e-3, atol=1e-5)
    assert checkpointed_peak < 0.8 * plain_peak, (checkpointed_peak, plain_peak)


def test_torchcrepe_on_cuda_labels_in_spawned_workers(tmp_path):
    config = load_config(tiny_config(tmp_path))
    dataset_params = copy.deepcopy(config["dataset_params"])
    f0_params = dataset_params["f0_params"]
    f0_params["pyworld"]["enabled"] = False
    f0_params["mode"] = "cascade"  # torchcrepe first in the cascade labels every clip
    f0_params["torchcrepe"].update(enabled=True, model="tiny", device=DEVICE)
    paths = [line.split("|")[0] for line in open(config["train_data"]) if line.strip()]
    dataset = MelDataset(paths, dataset_params, train=False)
    loader = build_dataloader(dataset, batch_size=2, num_workers=2, seed=0, device=DEVICE,
                              loader_params=dict(dataset_params["dataloader"], persistent_workers=False))
    assert loader.multiprocessing_context.get_start_method() == "spawn"
    batches = list(loader)  # each worker labels its clips with torchcrepe on the GPU and caches them
    assert sum(len(b["f0"]) for b in batches) == len(paths)
    for path in paths:
        cached = np.load(cache_paths(path, f0_params)[0])
        fresh, backend = compute_f0(load_audio(path), f0_params)  # the same, in this process
        assert backend == "torchcrepe"
        both = (cached > 0) & (fresh > 0)
        assert np.mean((cached > 0) == (fresh > 0)) >= 0.98
        # torchcrepe dithers each F0 by up to half a 20-cent bin (triangular), so two runs differ by ~5 cents
        assert np.median(np.abs(cents(cached[both], fresh[both]))) < 12.0


def test_inference_on_cuda_matches_cpu():
    wave = glide_clip(110.0, 220.0, 2.0, np.random.default_rng(0))
    _, f0_gpu, voiced_gpu, prob_gpu = load_predictor(device=DEVICE).predict(wave, 24000)
    _, f0_cpu, voiced_cpu, prob_cpu = load_predictor(device="cpu").predict(wave, 24000)
    assert np.max(np.abs(cents(f0_gpu, f0_cpu))) < 5.0
    assert np.max(np.abs(prob_gpu - prob_cpu)) < 1e-3
    assert np.mean(voiced_gpu == voiced_cpu) >= 0.99


def test_device_mel_and_augmentation_on_cuda_match_the_cpu():
    """The trainer's device-side feature step on the GPU: mels within 1e-5 of mel_spectrogram on the CPU,
    and the batched augmentation the same (float32 FFT rounding aside) as on the CPU for the same seeds."""
    from augment import Augmenter, noise_bank
    from config_defaults import DEFAULTS
    from features import mel_from_padded, mel_spectrogram, padded_crop

    rng = np.random.default_rng(0)
    clips = [glide_clip(*rng.uniform(100, 300, 2), 2.0, rng) for _ in range(3)]
    crops = torch.stack([torch.from_numpy(padded_crop(clip, 10, 150)) for clip in clips])
    gpu = mel_from_padded(crops.to(DEVICE)).cpu()
    for row, clip in enumerate(clips):
        assert torch.allclose(gpu[row], mel_spectrogram(clip)[:, 10:160], atol=1e-5, rtol=0)
    params = dict(DEFAULTS["dataset_params"]["augmentation"], enabled=True, probability=1.0, noise_bank_seconds=4.0)
    bank = noise_bank(4.0, seed=0, babble_clips=clips)
    seeds, lengths = torch.tensor([3, 4, 5]), torch.full((3,), crops.shape[1])
    on_gpu = Augmenter(params, bank, DEVICE)(crops.to(DEVICE), seeds, lengths).cpu()
    on_cpu = Augmenter(params, bank, "cpu")(crops, seeds, lengths)
    assert torch.allclose(on_gpu, on_cpu, atol=1e-4, rtol=0)
