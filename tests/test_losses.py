import math

import pytest
import torch
import torch.nn.functional as F

from losses import f0_loss, jdc_loss, vuv_loss

KINDS = ("l1_cents", "smoothl1_hz")


def batch():
    """2 clips × 6 frames: clip 0 has 1 padding frame, clip 1 has 2; unvoiced frames carry f0 = 0."""
    f0 = torch.tensor([[120.0, 130.0, 0.0, 0.0, 140.0, 0.0], [210.0, 0.0, 220.0, 230.0, 0.0, 0.0]])
    voiced = f0 > 0
    valid = torch.tensor([[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 0, 0]], dtype=torch.bool)
    voiced[0, 4] = True   # a voiced label on
    valid[0, 4] = False   # a padding frame: still excluded
    return f0, voiced, valid


def test_l1_cents_is_semitones():
    target = torch.tensor([[100.0, 200.0, 300.0]])
    pred = target * 2.0 ** (torch.tensor([[1.0, -2.0, 0.0]]) / 12.0)
    assert f0_loss(pred, target, torch.ones_like(target, dtype=torch.bool), "l1_cents").item() == pytest.approx(1.0)
    assert f0_loss(pred, target, torch.tensor([[True, True, False]]), "l1_cents").item() == pytest.approx(1.5)


def test_smoothl1_hz_is_upstream_scaled():
    target = torch.tensor([100.0, 200.0])
    pred = target + torch.tensor([0.5, -3.0])
    # 0.1 · mean(0.5·0.5², 3 − 0.5)
    assert f0_loss(pred, target, torch.ones(2, dtype=torch.bool), "smoothl1_hz").item() == pytest.approx(
        0.1 * (0.125 + 2.5) / 2
    )


@pytest.mark.parametrize("kind", KINDS)
def test_unvoiced_and_padding_frames_never_reach_the_f0_loss(kind):
    f0, voiced, valid = batch()
    mask = voiced & valid
    base = torch.where(mask, f0 * 1.1, torch.full_like(f0, 150.0))
    wild = torch.where(mask, base, torch.tensor([[-5.0, 0.0, 1e6, float("nan"), -1e3, 3.0]]).expand_as(f0))
    losses = []
    for values in (base, wild):
        pred = values.clone().requires_grad_()
        loss = f0_loss(pred, f0, mask, kind)
        loss.backward()
        assert torch.isfinite(loss) and loss.item() > 0
        assert (pred.grad[~mask] == 0).all() and (pred.grad[mask] != 0).all()
        losses.append(loss.item())
    assert losses[0] == losses[1]


def test_vuv_loss_averages_valid_frames_only():
    f0, voiced, valid = batch()
    logit = torch.randn(f0.shape, generator=torch.Generator().manual_seed(0)).requires_grad_()
    loss = vuv_loss(logit, voiced, valid)
    expected = F.binary_cross_entropy_with_logits(logit[valid], voiced[valid].float())
    assert loss.item() == pytest.approx(expected.item())
    loss.backward()
    assert (logit.grad[~valid] == 0).all() and (logit.grad[valid] != 0).all()
    changed = torch.where(valid, logit.detach(), torch.full_like(logit, 50.0))
    assert vuv_loss(changed, voiced, valid).item() == loss.item()


@pytest.mark.parametrize("kind", KINDS)
def test_empty_masks_give_zero_with_a_graph(kind):
    pred = torch.full((2, 3), 100.0, requires_grad=True)
    none = torch.zeros(2, 3, dtype=torch.bool)
    for loss in (f0_loss(pred, torch.zeros(2, 3), none, kind), vuv_loss(pred, none, none)):
        assert loss.item() == 0.0 and loss.requires_grad
        loss.backward()
        assert (pred.grad == 0).all()


def test_non_positive_predictions_get_a_finite_gradient_upwards():
    target = torch.full((3,), 200.0)
    pred = torch.tensor([-50.0, 0.0, 5.0], requires_grad=True)
    loss = f0_loss(pred, target, torch.ones(3, dtype=torch.bool), "l1_cents")
    loss.backward()
    assert torch.isfinite(loss) and loss.item() > 12.0 * math.log2(200.0 / 10.0)
    assert torch.isfinite(pred.grad).all() and (pred.grad < 0).all()


def test_float16_predictions_give_a_float32_loss():
    target = torch.tensor([100.0, 200.0])
    loss = f0_loss(target.half() * 2, target, torch.ones(2, dtype=torch.bool), "l1_cents")
    assert loss.dtype == torch.float32 and loss.item() == pytest.approx(12.0)


@pytest.mark.parametrize("kind", KINDS)
def test_jdc_loss_combines_the_terms(kind):
    f0, voiced, valid = batch()
    pred = torch.full_like(f0, 160.0, requires_grad=True)
    logit = torch.linspace(-2.0, 2.0, f0.numel()).reshape(f0.shape)
    total, parts = jdc_loss(pred, logit, f0, voiced, valid, lambda_vuv=0.25, f0_loss_kind=kind)
    assert parts["f0"].item() == pytest.approx(f0_loss(pred, f0, voiced & valid, kind).item())
    assert parts["vuv"].item() == pytest.approx(vuv_loss(logit, voiced, valid).item())
    assert total.item() == pytest.approx(parts["f0"].item() + 0.25 * parts["vuv"].item())
    assert total.requires_grad and not parts["f0"].requires_grad


def test_unknown_f0_loss_kind():
    with pytest.raises(ValueError, match="unknown f0 loss 'l2'"):
        f0_loss(torch.ones(2), torch.ones(2), torch.ones(2, dtype=torch.bool), "l2")


@pytest.mark.parametrize("kind", KINDS)
def test_contested_consensus_frames_reach_neither_loss(kind):
    """Trackers that disagree give NaN labels (consensus_f0); through collate they become uncertain frames,
    which change neither loss and get no gradient, whatever the predictions there."""
    import numpy as np

    from f0_labels import consensus_f0
    from meldataset import collate

    harvest = [200.0, 200.0, 0.0, 100.0, 300.0, 210.0]
    swift = [201.0, 400.0, 0.0, 200.0, 0.0, 212.0]
    praat = [199.0, 201.0, 0.0, 300.0, 150.0, 0.0]
    label = torch.from_numpy(consensus_f0(np.array([harvest, swift, praat]), 2, 50.0))
    uncertain = torch.tensor([False, False, False, True, True, False])
    assert torch.equal(torch.isnan(label), uncertain)
    batch = collate([(torch.zeros(6 * 300), label, label > 0, 0)])
    assert torch.equal(batch["certain"][0], ~uncertain) and torch.isfinite(batch["f0"]).all()

    def losses(pred_hz, logit):
        return jdc_loss(pred_hz, logit, batch["f0"], batch["voiced"], batch["valid"], 1.0, kind,
                        certain=batch["certain"])

    pred = torch.full((1, 6), 180.0, requires_grad=True)
    logit = torch.zeros(1, 6, requires_grad=True)
    total, parts = losses(pred, logit)
    total.backward()
    assert (pred.grad[0, uncertain] == 0).all() and (logit.grad[0, uncertain] == 0).all()
    assert (pred.grad[0, [0, 1, 5]] != 0).all() and (logit.grad[0, ~uncertain] != 0).all()
    wild_pred, wild_logit = pred.detach().clone(), logit.detach().clone()
    wild_pred[0, uncertain], wild_logit[0, uncertain] = 5000.0, -30.0
    _, wild_parts = losses(wild_pred, wild_logit)
    assert wild_parts["f0"] == parts["f0"] and wild_parts["vuv"] == parts["vuv"]
    certain = ~uncertain[None]
    assert parts["vuv"].item() == pytest.approx(vuv_loss(logit, batch["voiced"], certain).item())
