"""Model shapes, the hosts' state-dict layout, and the hosts' F0 computed independently."""
import json
import os

import pytest
import torch
import torch.nn.functional as F

from click.testing import CliRunner

from model import (Im2colConv2d, WidthMaxPool, WinogradConv2d, build_model, export_host_checkpoint, main as model_main,
                   winograd_model)

HERE = os.path.dirname(__file__)
HOST_KEYS = os.path.join(HERE, "data", "jdcnet_state_dict.json")


def randomised_lstm_model(seed=0):
    """An lstm model with random weights and non-trivial BatchNorm statistics, in eval mode."""
    torch.manual_seed(seed)
    model = build_model({"sequence_model": "lstm"})
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if name.endswith("running_mean"):
                tensor.copy_(torch.randn_like(tensor) * 0.3)
            elif name.endswith("running_var"):
                tensor.copy_(torch.rand_like(tensor) * 2 + 0.2)
            elif name.endswith("num_batches_tracked"):
                tensor.fill_(1234)
            elif tensor.dim() == 1 and name.endswith("weight"):
                tensor.copy_(1 + 0.3 * torch.randn_like(tensor))  # BatchNorm gamma away from 1
            elif tensor.dim() == 1 and name.endswith("bias") and "lstm" not in name:
                tensor.copy_(0.2 * torch.randn_like(tensor))  # BatchNorm beta away from 0
        # An F0 head that spreads outputs over a speech-like range, so the comparison is in Hz.
        model.classifier.weight.mul_(100.0)
        model.classifier.bias.fill_(150.0)
    return model.eval()


def host_f0(sd, x):
    """The hosts' JDCNet classifier branch, written from docs/host_contract.md with functional ops only."""
    def bn(h, p):
        return F.batch_norm(h, sd[p + ".running_mean"], sd[p + ".running_var"],
                            sd[p + ".weight"], sd[p + ".bias"], training=False, eps=1e-5)

    def conv(h, p, pad=1):
        return F.conv2d(h, sd[p + ".weight"], padding=pad)

    def lrelu(h):
        return F.leaky_relu(h, 0.01)

    def res_block(h, p):
        h = F.max_pool2d(lrelu(bn(h, p + ".pre_conv.0")), (1, 2))
        out = conv(lrelu(bn(conv(h, p + ".conv.0"), p + ".conv.1")), p + ".conv.3")
        return out + conv(h, p + ".conv1by1", pad=0)

    h = x.float().transpose(-1, -2)
    h = conv(lrelu(bn(conv(h, "conv_block.0"), "conv_block.1")), "conv_block.3")
    for i in (1, 2, 3):
        h = res_block(h, f"res_block{i}")
    h = F.max_pool2d(lrelu(bn(h, "pool_block.0")), (1, 4))
    b, _, t, _ = h.shape
    seq = h.permute(0, 2, 1, 3).contiguous().view(b, t, 512)
    weights = [sd["bilstm_classifier." + n] for n in (
        "weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0",
        "weight_ih_l0_reverse", "weight_hh_l0_reverse", "bias_ih_l0_reverse", "bias_hh_l0_reverse")]
    out = torch._VF.lstm(seq, (torch.zeros(2, b, 256), torch.zeros(2, b, 256)), weights,
                         True, 1, 0.0, False, True, True)[0]
    f0 = F.linear(out, sd["classifier.weight"], sd["classifier.bias"])
    return torch.abs(f0.squeeze(-1))


def test_lstm_state_dict_matches_host_keys_and_shapes():
    with open(HOST_KEYS) as f:
        expected = {k: list(v) for k, v in json.load(f).items()}
    got = {k: list(v.shape) for k, v in build_model({"sequence_model": "lstm"}).state_dict().items()}
    assert got == expected
    assert len(got) == 77


@pytest.mark.parametrize("frames", [192, 311])
def test_eval_f0_equals_host_computation(tmp_path, frames):
    model = randomised_lstm_model()
    path = tmp_path / "ckpt.pth"
    torch.save({"net": model.state_dict(), "epoch": 3}, path)
    sd = torch.load(path, map_location="cpu", weights_only=True)["net"]
    x = torch.randn(2, 1, 80, frames)
    with torch.no_grad():
        ours, _ = model(x)
        theirs = host_f0(sd, x)
    assert theirs.std() > 0.1  # varies frame to frame far beyond the 1e-4 Hz tolerance
    assert (ours - theirs).abs().max().item() <= 1e-4


@pytest.mark.parametrize("kind", ["transformer", "lstm"])
@pytest.mark.parametrize("frames", [1, 4, 80, 192, 1000, 4000])
def test_forward_shapes_batch_of_one(kind, frames):
    model = build_model({"sequence_model": kind}).eval()
    with torch.no_grad():
        f0, logit = model(torch.randn(1, 1, 80, frames))
    assert f0.shape == (1, frames) and logit.shape == (1, frames)
    assert torch.isfinite(f0).all() and torch.isfinite(logit).all() and (f0 >= 0).all()


def test_f0_head_starts_at_configured_pitch():
    model = build_model({"sequence_model": "lstm", "f0_init_hz": 200.0})
    assert model.classifier.bias.item() == 200.0


@pytest.mark.parametrize("use_reentrant", [False, True])
def test_gradient_checkpointing_gives_same_gradients(use_reentrant):
    torch.manual_seed(0)
    model = build_model({"sequence_model": "transformer", "cnn_dropout": 0.0,
                         "transformer": {"dropout": 0.0, "num_layers": 2}}).train()
    x = torch.randn(2, 1, 80, 24)

    def grads():
        model.zero_grad()
        f0, logit = model(x)
        (f0.mean() + logit.mean()).backward()
        return [p.grad.clone() for p in model.parameters()]

    plain = grads()
    model.set_gradient_checkpointing(True, use_reentrant=use_reentrant)
    checkpointed = grads()
    for a, b in zip(plain, checkpointed):
        assert torch.allclose(a, b, atol=1e-5)


def test_bad_input_shape_is_a_clear_error():
    with pytest.raises(ValueError, match=r"\(B, 1, 80, T\)"):
        build_model({"sequence_model": "lstm"})(torch.randn(1, 80, 10))


def test_unknown_sequence_model_is_rejected():
    with pytest.raises(ValueError, match="sequence_model"):
        build_model({"sequence_model": "gru"})


def test_export_host_checkpoint_is_weights_only(tmp_path):
    model = randomised_lstm_model()
    src, dst = tmp_path / "last.pth", tmp_path / "host.pth"
    torch.save({"net": model.state_dict(), "optimizer": {"state": {}}, "epoch": 7,
                "vuv_threshold": 0.42}, src)
    export_host_checkpoint(str(src), str(dst))
    out = torch.load(dst, map_location="cpu", weights_only=True)
    assert set(out) == {"net", "vuv_threshold"} and out["vuv_threshold"] == pytest.approx(0.42)
    host = build_model({"sequence_model": "lstm"})
    host.load_state_dict(out["net"], strict=True)
    size_mb = os.path.getsize(dst) / 2**20
    assert 19 < size_mb < 22


def test_export_command_refuses_a_transformer_and_writes_an_lstm(tmp_path):
    src = tmp_path / "t.pth"
    torch.save({"net": build_model({}).state_dict(), "model_params": {"sequence_model": "transformer"}}, src)
    result = CliRunner().invoke(model_main, [str(src), str(tmp_path / "out.pth")])
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert "Error: " in result.output and "transformer model does not have the hosts' JDCNet layout" in result.output
    assert not (tmp_path / "out.pth").exists()
    lstm = tmp_path / "last.pth"
    torch.save({"net": randomised_lstm_model().state_dict(), "vuv_threshold": 0.3}, lstm)
    result = CliRunner().invoke(model_main, [str(lstm), str(tmp_path / "host.pth")])
    assert result.exit_code == 0, result.output
    exported = torch.load(tmp_path / "host.pth", weights_only=True)
    assert set(exported) == {"net", "vuv_threshold"} and exported["vuv_threshold"] == pytest.approx(0.3)


def test_checkpointing_falls_back_when_torch_lacks_use_reentrant(monkeypatch):
    import model as model_module
    from torch.utils.checkpoint import checkpoint as real_checkpoint

    def old_torch_checkpoint(function, *args):  # the signature before `use_reentrant` existed
        return real_checkpoint(function, *args, use_reentrant=False)

    monkeypatch.setattr(model_module, "checkpoint", old_torch_checkpoint)
    model = build_model({"sequence_model": "lstm"}).train()
    model.set_gradient_checkpointing(True, use_reentrant=False)
    f0, logit = model(torch.randn(2, 1, 80, 16))
    (f0.mean() + logit.mean()).backward()
    assert model.conv_block[0].weight.grad is not None


def test_heads_stay_fp32_under_autocast():
    model = randomised_lstm_model()
    x = torch.randn(1, 1, 80, 40)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        f0, logit = model(x)
    assert f0.dtype == torch.float32 and logit.dtype == torch.float32
    with torch.no_grad():
        reference, _ = model(x)
    # bf16 features shift the F0 a little, but it is not quantised to bf16's ~1 Hz steps at 200 Hz
    assert (f0 - reference).abs().max() < 5.0
    assert len(torch.unique(f0)) == f0.numel()


@pytest.mark.parametrize("pool,width", [(2, 80), (2, 41), (4, 10), (4, 7), (10, 20), (10, 23), (20, 40), (40, 80),
                                        (40, 79)])
def test_width_max_pool_equals_max_pool_2d(pool, width):
    x = torch.randn(2, 3, 5, width)
    assert torch.equal(WidthMaxPool(pool)(x), torch.nn.MaxPool2d((1, pool))(x))


@pytest.mark.skipif(not torch._nnpack_available(), reason="this torch build or CPU has no NNPACK")
@pytest.mark.parametrize("kind", ["lstm", "transformer"])
def test_winograd_model_predicts_as_the_model_and_leaves_it_unchanged(kind):
    model = randomised_lstm_model() if kind == "lstm" else build_model(
        {"sequence_model": "transformer", "transformer": {"d_model": 32, "num_layers": 1, "num_heads": 2,
                                                          "ff_dim": 64}}).eval()
    with torch.no_grad():
        # F0 that moves by Hz from frame to frame (the fresh Transformer's hidden states vary far less)
        model.classifier.weight.mul_(30.0 if kind == "lstm" else 1000.0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fast = winograd_model(model)
    assert sum(isinstance(m, WinogradConv2d) for m in fast.modules()) == 7  # every 3x3 conv but the first
    assert isinstance(fast.conv_block[0], Im2colConv2d)
    assert sum(isinstance(m, WidthMaxPool) for m in fast.modules()) == 7
    # Of the 9 BatchNorms, the 5 that follow a convolution are folded into it.
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in fast.modules()) == 4
    assert not any(isinstance(m, WinogradConv2d) for m in model.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    torch.manual_seed(1)
    x = torch.randn(3, 1, 80, 203)  # a batch: WinogradConv2d runs NNPACK one item at a time
    with torch.inference_mode():
        (f0, logit), (fast_f0, fast_logit) = model(x), fast(x)
        alone_f0, _ = fast(x[1:2])
    assert f0.std() > 1.0  # F0 varies, so the comparison is not between constants
    torch.testing.assert_close(fast_f0, f0, rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(fast_logit, logit, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(alone_f0, fast_f0[1:2], rtol=1e-5, atol=1e-4)
