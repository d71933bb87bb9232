"""What is optimised: L_total = L_f0 + λ·L_vuv.

Shapes: every tensor is (B, T) on the 12.5 ms frame grid. Predictions are `f0_hz` (Hz) and `voiced_logit`
(sigmoid = P(voiced)); labels are `f0` (Hz, 0 = unvoiced), `voiced` (bool), `valid` (bool, False on padding) and `certain` (bool,
False where the label is uncertain: consensus labels whose trackers disagree, NaN in the cache).

Masks:
- L_f0 sees only frames that are voiced, certain and valid: an unvoiced label has no pitch to regress to,
  a contested one no trustworthy pitch, and padding is not audio. Other frames contribute neither to the
  value nor to the gradient.
- L_vuv sees every valid frame whose label is certain (an uncertain frame's voicing is contested).
Both are means over the frames they see, and 0 (still attached to the graph, so backward() works) when
they see none. Losses are computed in float32 whatever the prediction dtype (autocast may hand us float16).
Under torchrun the divisor is the whole job's count of such frames (the `denominator` argument), so N
processes give the gradient of one process with all N batches.
"""
import math

import torch
import torch.nn.functional as F

F0_LOSS_KINDS = ("l1_cents", "smoothl1_hz")

# Upstream (yl4579/PitchExtractor) trained with 0.1 · SmoothL1 on Hz (beta 1 Hz); keeping the factor keeps
# λ comparable with its setting.
UPSTREAM_SMOOTHL1_SCALE = 0.1

# Below this F0 the log is continued by its tangent: a prediction ≤ 0 Hz then gets a finite loss and a
# gradient that pushes it up, where a plain clamp would give it zero gradient and strand it. 10 Hz is far
# below any voice, so real predictions never reach the linear part.
LOG_F0_FLOOR_HZ = 10.0


def log2_hz(hz):
    """log2(hz), extended linearly below LOG_F0_FLOOR_HZ so it is finite and increasing for any input."""
    above_floor = torch.log2(hz.clamp(min=LOG_F0_FLOOR_HZ))
    tangent = math.log2(LOG_F0_FLOOR_HZ) + (hz - LOG_F0_FLOOR_HZ) / (LOG_F0_FLOOR_HZ * math.log(2.0))
    return torch.where(hz >= LOG_F0_FLOOR_HZ, above_floor, tangent)


def mean_or_zero(values, denominator=None):
    """Mean of the selected frames' losses; 0 with the graph intact when none are selected (a sum of nothing).

    `denominator`: a function of the number of selected frames giving the divisor instead of max(n, 1);
    distributed training passes one that counts the frames of every rank (distributed.share_of_global_count).
    """
    if denominator is None:
        return values.sum() / max(values.numel(), 1)
    return values.sum() / denominator(values.numel()).to(values.device)


def f0_loss(pred_hz, target_hz, mask, kind, denominator=None):
    """F0 regression loss averaged over the frames in `mask` (voiced & valid).

    kind:
      l1_cents    |12·log2(pred/target)| — L1 on log-F0 in semitones (= cents / 100), so an error of one
                  semitone costs 1: O(1) at the start of training, a fraction of 1 once it converges.
      smoothl1_hz 0.1 · SmoothL1(pred − target) in Hz with beta 1 Hz, the upstream loss.
    Frames outside `mask` are dropped before any arithmetic, so their values (0 Hz targets, garbage
    predictions on padding) can produce neither inf/nan nor gradient.
    """
    if kind not in F0_LOSS_KINDS:
        raise ValueError(f"unknown f0 loss '{kind}', expected one of {F0_LOSS_KINDS}")
    pred, target = pred_hz[mask].float(), target_hz[mask].float()
    if kind == "l1_cents":
        per_frame = 12.0 * (log2_hz(pred) - torch.log2(target)).abs()
    else:
        per_frame = UPSTREAM_SMOOTHL1_SCALE * F.smooth_l1_loss(pred, target, reduction="none", beta=1.0)
    return mean_or_zero(per_frame, denominator)


def vuv_loss(voiced_logit, voiced, valid, denominator=None):
    """Binary cross-entropy of the voicing logit against the voiced label, averaged over valid frames (nats)."""
    valid = valid.bool()
    logit, label = voiced_logit[valid].float(), voiced[valid].float()
    return mean_or_zero(F.binary_cross_entropy_with_logits(logit, label, reduction="none"), denominator)


def jdc_loss(f0_pred, voiced_logit, f0, voiced, valid, lambda_vuv, f0_loss_kind, denominator=None, certain=None):
    """L_total = L_f0 + lambda_vuv · L_vuv.

    Returns (total, {'f0': L_f0, 'vuv': L_vuv}); the parts are detached scalar tensors, for logging.
    `denominator`: see mean_or_zero (each part divides by its own frames' count). `certain`: None = every
    label is certain; else uncertain frames reach neither part.
    """
    labelled = valid.bool() if certain is None else valid.bool() & certain.bool()
    loss_f0 = f0_loss(f0_pred, f0, voiced.bool() & labelled, f0_loss_kind, denominator)
    loss_vuv = vuv_loss(voiced_logit, voiced, labelled, denominator)
    total = loss_f0 + lambda_vuv * loss_vuv
    return total, {"f0": loss_f0.detach(), "vuv": loss_vuv.detach()}
