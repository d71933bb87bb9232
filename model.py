"""The JDC pitch network and the hosts' checkpoint format.

The CNN front and the two branches (F0 classifier, voicing detector) follow the hosts' `JDCNet`
exactly, so with `sequence_model: lstm` our state dict loads strictly into StarGANv2-VC / StyleTTS
and predicts the same F0 there. `sequence_model: transformer` swaps both BiLSTMs for Transformer
encoders with a convolutional (relative) position encoding, so any length works.

forward(x): (B, 1, n_mels, T) -> (f0_hz, voiced_logit), each (B, T); sigmoid(voiced_logit) = P(voiced).

Export a weights-only host file:  python model.py SRC DST
"""
import copy
import io
import os

import click
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.fusion import fuse_conv_bn_eval
from torch.utils.checkpoint import checkpoint

from audio import write_atomically
from config_defaults import DEFAULTS
from features import N_MELS

SEQUENCE_MODELS = ("transformer", "lstm")
# The voicing threshold of a checkpoint that carries no calibrated one (a host file, a fresh model).
DEFAULT_VUV_THRESHOLD = 0.5


def voiced(prob, threshold):
    """The voicing decision from P(voiced): the one rule validation, plots and inference share."""
    return prob >= threshold


def model_config(model_params=None):
    """Complete model_params: the given keys (nested ones too) over the config defaults."""
    merged = copy.deepcopy(DEFAULTS["model_params"])
    for key, value in (model_params or {}).items():
        merged[key] = {**merged[key], **value} if isinstance(merged.get(key), dict) else value
    return merged


# A host {'net': ...} file holds the hosts' JDCNet: our lstm model with its default sizes.
HOST_MODEL_PARAMS = model_config({"sequence_model": "lstm"})


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
    kind = model_params["sequence_model"]
    if kind == "lstm":
        p = model_params["lstm"]
        layers, hidden = p["num_layers"], p["hidden_size"]
        # A bare nn.LSTM keeps the hosts' keys (`bilstm_classifier.weight_ih_l0`, ...).
        return lambda: nn.LSTM(512, hidden, num_layers=layers, batch_first=True, bidirectional=True,
                               dropout=p["dropout"] if layers > 1 else 0.0), 2 * hidden
    if kind == "transformer":
        p = model_params["transformer"]
        if p["d_model"] % p["num_heads"]:
            raise ValueError(f"model_params.transformer.num_heads ({p['num_heads']}) must divide d_model "
                             f"({p['d_model']})")
        return lambda: TransformerSequence(512, p["d_model"], p["num_layers"], p["num_heads"], p["ff_dim"],
                                           p["dropout"], p["pos_kernel_size"]), 512
    raise ValueError(f"model_params.sequence_model must be one of {', '.join(SEQUENCE_MODELS)}, got {kind!r}")


VOICING_BRANCH = ("detector_conv", "bilstm_detector", "detector")  # the modules only the voicing output uses


class JDCNet(nn.Module):
    """Joint detection (voicing) and classification (F0) network on normalised log-mels."""

    def __init__(self, model_params):
        """`model_params`: complete (see model_config)."""
        super().__init__()
        slope, dropout = model_params["leaky_relu_slope"], model_params["cnn_dropout"]
        if model_params["num_class"] != 1:
            raise ValueError("model_params.num_class must be 1 (F0 regression, as the hosts build it), "
                             f"got {model_params['num_class']}")
        self.sequence_model = model_params["sequence_model"]
        self.gradient_checkpointing = False
        self.checkpoint_use_reentrant = False
        self.voicing_only = False

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
        nn.init.constant_(self.classifier.bias, float(model_params["f0_init_hz"]))

    def train_voicing_only(self):
        """From now on only the voicing branch learns: every other parameter stops requiring gradients and
        every other module stays in eval mode whatever train() says (BatchNorm keeps its running statistics,
        dropout is off), so the F0 output stays exactly what it was."""
        self.voicing_only = True
        for name, parameter in self.named_parameters():
            parameter.requires_grad_(name.split(".")[0] in VOICING_BRANCH)
        return self.train(self.training)

    def train(self, mode=True):
        super().train(mode)
        if self.voicing_only:
            for name, module in self.named_children():
                if name not in VOICING_BRANCH:
                    module.train(False)
        return self

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


def build_model(model_params=None):
    """JDCNet from model_params; keys left out take the config defaults."""
    return JDCNet(model_config(model_params))


class WinogradConv2d(nn.Conv2d):
    """A 3x3 convolution through NNPACK's Winograd kernels (inference only: NNPACK has no backward).

    On one AVX2 core the CNN front's 3x3 convolutions are ~2.5x faster than oneDNN's direct ones, which
    already run at the core's FMA peak: Winograd F(6x6, 3x3) needs far fewer multiplications. Outputs
    agree with nn.Conv2d to ~1e-5 (tests/test_model.py). `torch._nnpack_spatial_convolution` is an ATen op
    without a public wrapper; the tests fail if the pinned torch ever drops it."""

    def forward(self, x):
        # One item at a time: NNPACK's batch-1 path is its inference kernel, ~1.7x faster per item than its
        # batched (training) one.
        outputs = [torch._nnpack_spatial_convolution(item[None].contiguous(), self.weight, self.bias, self.padding,
                                                     self.stride) for item in x]
        return outputs[0] if len(outputs) == 1 else torch.cat(outputs)


class Im2colConv2d(nn.Conv2d):
    """A convolution as im2col and one matrix product (THNN): for the one-channel first layer, where oneDNN
    spends ~20 ms compiling a kernel for each new input length, on one thread."""

    def forward(self, x):
        return torch._C._nn.thnn_conv2d(x, self.weight, self.kernel_size, self.bias, self.stride, self.padding)


class WidthMaxPool(nn.Module):
    """nn.MaxPool2d((1, k)) on contiguous (NCHW) input, 2-5x faster on CPU: the rows pooled as one 1-D
    max-pool for k = 2 (amax over a size-2 axis is slow there), a reshape and amax for wider windows."""

    def __init__(self, width):
        super().__init__()
        self.width = width

    def forward(self, x):
        if self.width == 2:
            return F.max_pool1d(x.reshape(1, -1, x.shape[-1]), 2).view(*x.shape[:-1], -1)
        kept = x.shape[-1] // self.width * self.width  # floor, as MaxPool2d drops a partial window
        return x[..., :kept].unflatten(-1, (-1, self.width)).amax(-1)


def winograd_model(model):
    """A copy of `model` for CPU inference on one thread where NNPACK is available
    (torch._nnpack_available()), equal to it within float rounding: each BatchNorm that follows a convolution
    folded into it, its 3x3 convolutions on more than one channel as WinogradConv2d, the first one (one
    input channel, where Winograd is slower) as Im2colConv2d, its (1, k) max-pools as WidthMaxPool and its
    LeakyReLUs in place. Run it on contiguous input."""
    model = copy.deepcopy(model).eval()
    for sequence in [m for m in model.modules() if isinstance(m, nn.Sequential)]:
        for i in range(len(sequence) - 1):
            if isinstance(sequence[i], nn.Conv2d) and isinstance(sequence[i + 1], nn.BatchNorm2d):
                sequence[i] = fuse_conv_bn_eval(sequence[i], sequence[i + 1])
                sequence[i + 1] = nn.Identity()
    for parent in list(model.modules()):
        for name, child in parent.named_children():
            if (type(child) is nn.Conv2d and child.kernel_size == (3, 3) and child.stride == (1, 1)
                    and child.dilation == (1, 1) and child.groups == 1):
                fast = (WinogradConv2d if child.in_channels > 1 else Im2colConv2d)(
                    child.in_channels, child.out_channels, 3, padding=child.padding, bias=child.bias is not None)
                fast.load_state_dict(child.state_dict())
                setattr(parent, name, fast)
            elif (type(child) is nn.MaxPool2d and child.kernel_size[0] == 1 and child.stride == child.kernel_size
                    and child.padding == 0 and child.dilation == 1 and not child.ceil_mode):
                setattr(parent, name, WidthMaxPool(child.kernel_size[1]))
            elif isinstance(child, nn.LeakyReLU):
                child.inplace = True  # in JDCNet its input is always a fresh BatchNorm or convolution output
    return model


def host_state_dict_shapes():
    """Keys and shapes of the hosts' JDCNet(num_class=1) state dict (= our lstm model's)."""
    return {k: tuple(v.shape) for k, v in JDCNet(HOST_MODEL_PARAMS).state_dict().items()}


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message is one line naming the file and the fix."""


def load_checkpoint(path):
    """Load one of our checkpoints or a host `{'net': ...}` file with plain-typed contents only.

    Anything that is not such a file (missing, a folder, empty, truncated, text, another pickle) is a
    one-line CheckpointError.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        what = "is a folder, not a checkpoint file" if os.path.isdir(path) else "checkpoint not found"
        raise CheckpointError(f"{path}: {what}; check the path")
    if os.path.getsize(path) == 0:
        raise CheckpointError(f"{path}: empty file (0 bytes), not a checkpoint; use another file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch.load raises many types for a damaged file; all mean "unreadable"
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({reason})") from None
    if not isinstance(state, dict) or not isinstance(state.get("net"), dict):
        raise CheckpointError(f"{path}: not a PitchExtractor/host checkpoint (no 'net' key)")
    bad = nonfinite_tensors(state["net"])
    if bad:
        raise CheckpointError(f"{path}: {len(bad)} tensor(s) hold NaN or infinite weights ({', '.join(bad[:3])}"
                              f"{', ...' if len(bad) > 3 else ''}): the run that wrote it diverged; use an earlier "
                              "checkpoint")
    return state


def nonfinite_tensors(state_dict):
    """Names of the floating-point tensors of a state dict that hold a NaN or an infinity."""
    return [key for key, value in state_dict.items()
            if torch.is_tensor(value) and value.is_floating_point() and not torch.isfinite(value).all()]


def checkpoint_model_params(state):
    """The model_params a checkpoint was built with: its own, or the hosts' for a host weights-only file."""
    return model_config(state.get("model_params") or HOST_MODEL_PARAMS)


def export_host_checkpoint(src, dst):
    """Write a weights-only `{'net': state_dict, 'vuv_threshold': t}` for StarGANv2-VC / StyleTTS."""
    state = load_checkpoint(src)
    net = state["net"]
    shapes = {k: tuple(v.shape) for k, v in net.items()}
    if shapes != host_state_dict_shapes():
        kind = checkpoint_model_params(state)["sequence_model"]
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


@click.command()
@click.argument("src", type=click.Path(dir_okay=False))
@click.argument("dst", type=click.Path(dir_okay=False))
def main(src, dst):
    """Export SRC (one of our checkpoints: last.pth, best.pth, ...) as a weights-only host file DST for
    StarGANv2-VC / StyleTTS (their F0_path): {'net': ..., 'vuv_threshold': ...}."""
    try:
        export_host_checkpoint(src, dst)
    except ValueError as err:  # CheckpointError, not a host layout
        raise click.ClickException(str(err)) from None
    except OSError as err:
        raise click.ClickException(f"{err.filename or dst}: cannot write ({err.strerror or err})") from None
    click.echo(f"wrote {dst}")


if __name__ == "__main__":
    main()
