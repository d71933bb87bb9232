"""Is it the F0 head or the features under it that limits a model's range? The head alone, refitted.

    python benchmarks/f0_head_probe.py CHECKPOINT [-p Configs/pretrain.yml] [--set key=value ...]
                                       [--batches 80] [--steps 600] [--lr 0.01]

Draws `--batches` training batches as the trainer does (the config's data, synthetic blend and augmentation)
and keeps, for every voiced, certain frame, the BiLSTM classifier output under the F0 head and the frame's
label. Then it trains the head (the hosts' Linear(512, 1) in Hz) alone on those fixed features with the
training loss (L1 on semitones; Adam, full batch) on 80 % of the frames, and prints on the other 20 % the
RPA per band of the checkpoint's head and of the refitted one, with each head's ceiling |bias| + Σ|w|.
Where the refitted head reads a band no better, the features do not tell its pitches apart: a faster head
(optimizer_params.f0_head_lr_scale) cannot help there; only training the network can.
"""
import argparse
import os
import sys
import tempfile

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from config import load_config  # noqa: E402
from losses import f0_loss  # noqa: E402
from metrics import cents_error  # noqa: E402
from train import prepare_labels  # noqa: E402
from trainer import Trainer  # noqa: E402

BANDS_HZ = (0, 65, 80, 100, 150, 250, 400, 600, 1001)


@torch.no_grad()
def head_inputs(trainer, batches):
    """(features (N, 512), labels (N,) Hz) of the voiced, certain frames of `batches` training batches."""
    model = trainer.model.eval()
    trainer.train_loader.dataset.prepare_epoch(0)
    trainer.train_loader.sampler.set_epoch(0)
    features, labels = [], []
    for count, batch in enumerate(trainer.train_loader):
        if count == batches:
            break
        classifier_in, _, _ = model.cnn_features(trainer.mels(batch, train=True))
        keep = batch["voiced"] & batch["valid"] & batch["certain"]
        features.append(model._run(model.bilstm_classifier, classifier_in)[keep].float())
        labels.append(batch["f0"][keep].float())
    return torch.cat(features), torch.cat(labels)


def refit_head(weight, bias, features, labels, steps, lr):
    """The head (weight (512,), bias (1,)) trained alone on fixed features with the L1-semitone loss."""
    weight, bias = weight.clone().requires_grad_(), bias.clone().requires_grad_()
    optimizer = torch.optim.Adam([weight, bias], lr=lr)
    every_frame = torch.ones_like(labels, dtype=torch.bool)
    for _ in range(steps):
        optimizer.zero_grad()
        loss = f0_loss((features @ weight + bias).abs(), labels, every_frame, "l1_cents")
        loss.backward()
        optimizer.step()
    return weight.detach(), bias.detach()


def band_rpa(weight, bias, features, labels):
    """RPA (%) per band of BANDS_HZ (NaN where a band has no frame)."""
    error = np.abs(cents_error(labels.numpy(), (features @ weight + bias).abs().numpy()))
    hz = labels.numpy()
    return [100.0 * np.mean(error[(hz >= low) & (hz < high)] < 50) if np.any((hz >= low) & (hz < high)) else np.nan
            for low, high in zip(BANDS_HZ[:-1], BANDS_HZ[1:])]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("-p", "--config", default="Configs/pretrain.yml")
    parser.add_argument("--set", action="append", default=[], dest="overrides")
    parser.add_argument("--batches", type=int, default=80)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--lr", type=float, default=0.01)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as run_dir:
        config = load_config(args.config, [*args.overrides, f"pretrained_model={args.checkpoint}",
                                           "load_only_params=true", f"log_dir={run_dir}"])
        trainer = Trainer(config, run_dir, prepare_labels(config))
        features, labels = head_inputs(trainer, args.batches)
    order = torch.from_numpy(np.random.default_rng(0).permutation(len(labels)))
    fit, held = order[: int(0.8 * len(order))], order[int(0.8 * len(order)):]
    head = trainer.model.classifier
    old = head.weight.detach()[0], head.bias.detach()
    new = refit_head(*old, features[fit], labels[fit], args.steps, args.lr)
    counts = np.histogram(labels[held].numpy(), BANDS_HZ)[0]
    print(f"{len(labels)} frames; held-out RPA by band (frames): " + ", ".join(
        f"{low}-{high} Hz ({n})" for low, high, n in zip(BANDS_HZ[:-1], BANDS_HZ[1:], counts)))
    for name, (weight, bias) in (("checkpoint's head", old), ("refitted head", new)):
        ceiling = float(bias.abs().sum() + weight.abs().sum())
        print(f"{name:18s} ceiling {ceiling:6.0f} Hz | " + " | ".join(
            f"{rpa:5.1f}" for rpa in band_rpa(weight, bias, features[held], labels[held])))


if __name__ == "__main__":
    main()
