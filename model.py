"""The JDC pitch network and the hosts' checkpoint format.

The CNN front and the two branches (F0 classifier, voicing detector) follow the hosts' `JDCNet`
exactly, so with `sequence_model: lstm` our state dict loads strictly into StarGANv2-VC / StyleTTS
and predicts the same F0 there. `sequence_model: transformer` swaps both BiLSTMs for Transformer
encoders with a convolutional (relative) position encoding, so any length works.

forward(x): (B, 1, n_mels, T) -> (f0_hz, voiced_logit), each (B, T); sigmoid(voiced_logit) = P(voiced).
"""
import argparse
import io
import os
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from audio import write_atomically

N_MELS = 80


class ResBlock(nn.Module):
    """The hosts' residual block: BN-LeakyReLU-MaxPool(1x2) then two 3x3 convs + 1x1 shortcut."""

    def __init__(self, in_channels, out_channels, slope):
        super().__init__()
        self.pre_conv = nn.Sequential(
            nn.BatchNorm2d(in_channels), nn.LeakyReLU(slope), nn.MaxPool2d(kernel_size=(1, 2)))
        self.conv = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels), nn.LeakyReLU(slope),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False))
        self.conv1by1 = nn.Conv2d(in_channels, out_channels, 1, bias=False)

    def forward(self, x):
        x = self.pre_conv(x)
        return self.conv(x) + self.conv1by1(x)


class ConvPositionalEncoding(nn.Module):
    """Depthwise conv over time added to the input (as in wav2vec 2.0): relative, no length limit."""

    def __init__(self, d_model, kernel_size):
        super().__init__()
        if kernel_size % 2 == 0:
            raise ValueError(f"model_params.transformer.pos_kernel_size must be odd, got {kernel_size}")
        self.conv = nn.Conv1d(d_model, d_model, kernel_size, padding=kernel_size // 2, groups=d_model)

    def forward(self, x):  # (B, T, C)
        return x + F.gelu(self.conv(x.transpose(1, 2)).transpose(1, 2))


class TransformerSequence(nn.Module):
    """Linear 512->d_model, conv position encoding, pre-norm encoder, output back to 512 wide."""

    def __init__(self, input_size, d_model, num_layers, num_heads, ff_dim, dropout, pos_kernel_size):
        super().__init__()
        self.proj_in = nn.Linear(input_size, d_model)
        self.position = ConvPositionalEncoding(d_model, pos_kernel_size)
        layer = nn.TransformerEncoderLayer(d_model, num_heads, ff_dim, dropout, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers, norm=nn.LayerNorm(d_model),
                                             enable_nested_tensor=False)
        self.proj_out = nn.Linear(d_model, input_size)

    def forward(self, x):
        return self.proj_out(self.encoder(self.position(self.proj_in(x))))


def _sequence_model(model_params):
    kind = model_params.get("sequence_model", "transformer")
    if kind == "lstm":
        p = model_params.get("lstm", {})
        layers, hidden = p.get("num_layers", 1), p.get("hidden_size", 256)
        # A bare nn.LSTM keeps the hosts' keys (`bilstm_classifier.weight_ih_l0`, ...).
        return lambda: nn.LSTM(512, hidden, num_layers=layers, batch_first=True, bidirectional=True,
                               dropout=p.get("dropout", 0.0) if layers > 1 else 0.0), 2 * hidden
    if kind == "transformer":
        p = model_params.get("transformer", {})
        return lambda: TransformerSequence(
            512, p.get("d_model", 256), p.get("num_layers", 4), p.get("num_heads", 4),
            p.get("ff_dim", 1024), p.get("dropout", 0.1), p.get("pos_kernel_size", 31)), 512
    raise ValueError(f"model_params.sequence_model must be 'transformer' or 'lstm', got {kind!r}")


class JDCNet(nn.Module):
    """Joint detection (voicing) and classification (F0) network on normalised log-mels."""

    def __init__(self, model_params=None):
        super().__init__()
        model_params = dict(model_params or {})
        slope = model_params.get("leaky_relu_slope", 0.01)
        dropout = model_params.get("cnn_dropout", 0.5)
        num_class = model_params.get("num_class", 1)
        if num_class != 1:
            raise ValueError(f"model_params.num_class must be 1 (F0 regression, as the hosts build it), got {num_class}")
        self.sequence_model = model_params.get("sequence_model", "transformer")
        self.gradient_checkpointing = False
        self.checkpoint_use_reentrant = False

        self.conv_block = nn.Sequential(
            nn.Conv2d(1, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64), nn.LeakyReLU(slope),
            nn.Conv2d(64, 64, 3, padding=1, bias=False))
        self.res_block1 = ResBlock(64, 128, slope)
        self.res_block2 = ResBlock(128, 192, slope)
        self.res_block3 = ResBlock(192, 256, slope)
        self.pool_block = nn.Sequential(
            nn.BatchNorm2d(256), nn.LeakyReLU(slope), nn.MaxPool2d(kernel_size=(1, 4)), nn.Dropout(dropout))
        # Multi-resolution features of the earlier blocks feed the voicing detector (the JDC idea).
        self.maxpool1 = nn.MaxPool2d(kernel_size=(1, 40))
        self.maxpool2 = nn.MaxPool2d(kernel_size=(1, 20))
        self.maxpool3 = nn.MaxPool2d(kernel_size=(1, 10))
        self.detector_conv = nn.Sequential(
            nn.Conv2d(640, 256, 1, bias=False), nn.BatchNorm2d(256), nn.LeakyReLU(slope), nn.Dropout(dropout))

        make_sequence, width = _sequence_model(model_params)
        self.bilstm_classifier = make_sequence()
        self.bilstm_detector = make_sequence()
        self.classifier = nn.Linear(width, 1)
        self.detector = nn.Linear(width, 2)
        # Start the F0 head at a speech-like pitch: from 0 Hz the regression needs far more steps.
        nn.init.constant_(self.classifier.bias, float(model_params.get("f0_init_hz", 150.0)))

    def set_gradient_checkpointing(self, enabled, use_reentrant=False):
        self.gradient_checkpointing = bool(enabled)
        self.checkpoint_use_reentrant = bool(use_reentrant)

    def _run(self, module, x):
        # Re-entrant checkpointing drops parameter gradients when its input needs none (the mels).
        reentrant_without_grad = self.checkpoint_use_reentrant and not x.requires_grad
        if not (self.gradient_checkpointing and self.training and torch.is_grad_enabled()) \
                or reentrant_without_grad:
            out = module(x)
        else:
            try:
                out = checkpoint(module, x, use_reentrant=self.checkpoint_use_reentrant)
            except TypeError:  # torch releases before the `use_reentrant` keyword
                out = checkpoint(module, x)
        return out[0] if isinstance(out, tuple) else out  # nn.LSTM returns (output, state)

    def cnn_features(self, x):
        """(B, 1, n_mels, T) -> classifier input (B, T, 512), detector input (B, T, 512), GAN feature."""
        if x.dim() != 4 or x.shape[1] != 1 or x.shape[2] != N_MELS:
            raise ValueError(f"expected mels of shape (B, 1, {N_MELS}, T), got {tuple(x.shape)}")
        x = x.float().transpose(-1, -2)  # (B, 1, T, n_mels): time as height, as the hosts do
        conv_out = self._run(self.conv_block, x)
        res1 = self._run(self.res_block1, conv_out)
        res2 = self._run(self.res_block2, res1)
        res3 = self._run(self.res_block3, res2)
        pooled = self.pool_block[1](self.pool_block[0](res3))
        gan_feature = pooled.transpose(-1, -2)  # (B, 256, 10, T)
        pooled = self.pool_block[3](self.pool_block[2](pooled))  # (B, 256, T, 2)
        batch, _, frames, _ = pooled.shape
        classifier_in = pooled.permute(0, 2, 1, 3).reshape(batch, frames, 512)
        detector_in = torch.cat(
            [self.maxpool1(conv_out), self.maxpool2(res1), self.maxpool3(res2), pooled], dim=1)
        detector_in = self._run(self.detector_conv, detector_in).permute(0, 2, 1, 3).reshape(batch, frames, 512)
        return classifier_in, detector_in, gan_feature

    def forward(self, x):
        classifier_in, detector_in, _ = self.cnn_features(x)
        classifier_out = self._run(self.bilstm_classifier, classifier_in)
        detector_hidden = self._run(self.bilstm_detector, detector_in)
        # The heads stay fp32 under autocast: in fp16/bf16 an F0 of ~200 Hz has steps of 0.1-1 Hz.
        with torch.autocast(x.device.type, enabled=False):
            f0 = self.classifier(classifier_out.float()).squeeze(-1)
            detector_out = self.detector(detector_hidden.float())
        # Two-class detector (unvoiced, voiced): the log-odds of "voiced" is their logit difference.
        voiced_logit = detector_out[..., 1] - detector_out[..., 0]
        return torch.abs(f0), voiced_logit  # abs() as the hosts apply it


def build_model(model_params):
    return JDCNet(model_params)


def resolve_device(name):
    """'auto' -> cuda when available, else cpu; a CUDA device on a machine without one is a ValueError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"device {name!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} but this machine has no CUDA GPU; use cpu or auto")
    return device


def host_state_dict_shapes():
    """Keys and shapes of the hosts' JDCNet(num_class=1) state dict (= our lstm model's)."""
    return {k: tuple(v.shape) for k, v in build_model({"sequence_model": "lstm"}).state_dict().items()}


def load_checkpoint(path):
    """Load one of our checkpoints or a host `{'net': ...}` file with plain-typed contents only."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: checkpoint not found; check the path") from None
    if not isinstance(state, dict) or "net" not in state:
        raise ValueError(f"{path}: not a PitchExtractor/host checkpoint (no 'net' key)")
    return state


def export_host_checkpoint(src, dst):
    """Write a weights-only `{'net': state_dict, 'vuv_threshold': t}` for StarGANv2-VC / StyleTTS."""
    state = load_checkpoint(src)
    net = state["net"]
    shapes = {k: tuple(v.shape) for k, v in net.items()}
    expected = host_state_dict_shapes()
    if shapes != expected:
        kind = (state.get("config") or {}).get("model_params", {}).get("sequence_model", "unknown")
        raise ValueError(
            f"{src}: this {kind} model does not have the hosts' JDCNet layout; only "
            f"`model_params.sequence_model: lstm` with lstm hidden_size 256, num_layers 1 can be exported")
    out = {"net": {k: v.detach().clone().contiguous() for k, v in net.items()}}
    if "vuv_threshold" in state:
        out["vuv_threshold"] = float(state["vuv_threshold"])
    save_checkpoint(out, dst)


def save_checkpoint(obj, path):
    """torch.save, written atomically: a kill never leaves half a checkpoint."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    write_atomically(path, buffer.getvalue())


def main(argv=None):
    parser = argparse.ArgumentParser(description="Export a host-loadable weights-only JDC checkpoint.")
    parser.add_argument("src", help="one of our checkpoints (last.pth, best.pth, ...)")
    parser.add_argument("dst", help="output file for StarGANv2-VC / StyleTTS (F0_path)")
    args = parser.parse_args(argv)
    try:
        export_host_checkpoint(args.src, args.dst)
    except (ValueError, FileNotFoundError) as err:
        sys.exit(f"error: {err}")
    print(f"wrote {args.dst}")


if __name__ == "__main__":
    main()
