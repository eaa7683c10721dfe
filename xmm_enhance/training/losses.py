"""Losses: expected Poisson deviance against noise-free targets.

For a noise-free expected count ``lam`` and a prediction ``mu``, the expected Poisson deviance of
independent counts ``k ~ Poisson(lam)`` is, up to a term that does not depend on ``mu``,

    E[2 (k ln(k/mu) - (k - mu))] = 2 (lam ln(lam/mu) - lam + mu) + c(lam),

so minimising ``KL(lam, mu) = lam ln(lam/mu) - lam + mu`` (zero at ``mu = lam``) minimises the
held-out deviance the DN model is scored on, pixel by pixel, without adding target noise.

The score is a mean over mostly faint pixels, while the raw KL sum is dominated by the few bright
crops (and their gradients are noisy), so each crop's mean KL is divided by
``sqrt(1 + mean lam / lam_ref)``: faint crops keep full weight, very bright ones are damped.
"""
from __future__ import annotations

import torch
from torch.nn import functional as F

__all__ = ["poisson_kl", "crop_weighted_kl", "dn_loss", "sr_loss", "quantile_loss",
           "decomposition_loss"]


def poisson_kl(lam, mu):
    """Pixelwise ``lam ln(lam/mu) - lam + mu`` (``0 ln 0 = 0``); tensors of the same shape."""
    mu = torch.clamp(mu, min=1e-8)
    t = torch.where(lam > 0, lam * (torch.log(torch.clamp(lam, min=1e-12)) - torch.log(mu)),
                    torch.zeros_like(lam))
    return t - lam + mu


def crop_weighted_kl(lam, mu, mask, *, lam_ref=1.0):
    """Mean over crops of (masked mean KL) / sqrt(1 + masked mean lam / lam_ref).

    Parameters
    ----------
    lam, mu, mask : Tensor [N, 1, H, W]
        Expected counts, predicted counts, loss mask (1 = scored).
    lam_ref : float
        Counts per pixel below which a crop keeps (almost) full weight.
    """
    kl = poisson_kl(lam, mu) * mask
    npx = mask.sum(dim=(1, 2, 3)).clamp(min=1.0)
    per = kl.sum(dim=(1, 2, 3)) / npx
    mean_lam = (lam * mask).sum(dim=(1, 2, 3)) / npx
    w = torch.rsqrt(1.0 + mean_lam / lam_ref)
    return (per * w).mean()


def dn_loss(pred_rate, target_rate, mask, *, exposure=50e3):
    """DN loss: crop-weighted expected deviance at ``exposure`` (s) of held-out counts.

    Parameters
    ----------
    pred_rate, target_rate, mask : Tensor [N, 1, H, W]
        Predicted and expected rate (counts/s/pixel) and the loss mask.
    exposure : float
        Exposure turning rates into counts (the real held-out exposures are 31-100 ks).
    """
    return 2.0 * crop_weighted_kl(target_rate * exposure, pred_rate * exposure, mask)


def sr_loss(pred_rate, target_rate, mask, *, exposure=20e3, flux_weight=0.5, block=4,
            shape_weight=0.0, shape_ref=100.0, shape_scale=None):
    """SR loss: expected deviance on the 2x grid plus the same on ``block``-summed maps.

    The second term (deviance of block sums, 8" for ``block = 4``) ties the local flux of the
    prediction to the truth's (flux conservation) without asking for the exact sub-pixel shape.
    The optional third term (``shape_weight``) is each crop's summed KL divided by its total
    expected counts plus ``shape_ref``: a point source is a tiny share of a crop's mean KL, so
    without it the sharpening of sources is learnt slowly; in source-free crops the same term
    punishes any predicted counts (false sources). ``shape_scale`` (one factor per crop) weights
    that term per crop: training uses ``max(1, T_in / 20 ks) ** p``, because a deeper input
    pins each source's position and width down better, so a source drawn wider than half the
    PSF costs more there (a held-out exposure as deep as the input would see the extra width at
    higher significance).

    Parameters
    ----------
    pred_rate, target_rate : Tensor [N, 1, 2H, 2W]
        Background-free rates per 2" pixel.
    mask : Tensor [N, 1, 2H, 2W]
    exposure : float
        Exposure (s) setting the counts scale (20 ks equivalent).
    """
    lam, mu = target_rate * exposure, pred_rate * exposure
    fine = crop_weighted_kl(lam, mu, mask)
    lam_b = F.avg_pool2d(lam * mask, block) * block * block
    mu_b = F.avg_pool2d(mu * mask, block) * block * block
    m_b = (F.avg_pool2d(mask, block) > 0.5).to(mask.dtype)
    coarse = crop_weighted_kl(lam_b, mu_b, m_b, lam_ref=block * block) / (block * block)
    total = fine + flux_weight * coarse
    if shape_weight:
        total = total + shape_weight * _count_normalised_kl(lam, mu, mask, shape_ref,
                                                            scale=shape_scale)
    return 2.0 * total


def _count_normalised_kl(lam, mu, mask, ref, scale=None):
    """Mean over crops of the crop's summed KL divided by its expected counts plus ``ref``
    (times ``scale[i]`` for crop ``i`` when given)."""
    kl_sum = (poisson_kl(lam, mu) * mask).sum(dim=(1, 2, 3))
    per = kl_sum / ((lam * mask).sum(dim=(1, 2, 3)) + ref)
    if scale is not None:
        per = per * scale.reshape(per.shape).to(per.dtype)
    return per.mean()


def quantile_loss(lo, hi, truth, mask, *, exposure=20e3, q=(0.16, 0.84)):
    """Pinball loss of the 16th/84th-percentile maps against the noise-free truth.

    Minimised (per pixel, over the inputs a truth can come from) by the ``q`` quantiles of the
    truth given the input. Quantiles commute with monotone maps, so the loss is taken on
    ``sqrt(rate * exposure)`` (about equal noise everywhere) and bright pixels do not dominate;
    the minimiser is unchanged.

    Parameters
    ----------
    lo, hi, truth, mask : Tensor [N, 1, H, W]
        Predicted lower and upper percentiles, the truth (rates) and the loss mask.
    exposure : float
        Exposure (s) of the sqrt stretch.
    """
    g = lambda x: torch.sqrt(torch.clamp(x, min=0.0) * exposure + 1e-6)  # noqa: E731
    t = g(truth)
    total = 0.0
    for pred, tau in ((lo, q[0]), (hi, q[1])):
        d = t - g(pred)
        pin = torch.maximum(tau * d, (tau - 1.0) * d) * mask
        total = total + (pin.sum(dim=(1, 2, 3)) / mask.sum(dim=(1, 2, 3)).clamp(min=1.0)).mean()
    return total


def decomposition_loss(points, diffuse, points_target, diffuse_target, mask, *, exposure=20e3,
                       point_weight=0.0, point_ref=100.0):
    """Crop-weighted expected deviance of each component against its own target.

    ``KL(P_t, P) + KL(D_t, D)`` equals ``KL(P_t + D_t, P + D)`` plus the target-weighted
    binary divergence of the point-source fraction, so with the total already in the SR loss this
    term teaches the split without pulling the total elsewhere.

    ``point_weight`` adds each crop's summed point-component KL divided by its point-source
    counts plus ``point_ref``: point sources are a small share of a crop's mean deviance, so
    without it the flux they leave in the diffuse component (and knots drawn as points in
    source-free crops, where the term is the predicted point counts / ``point_ref``) is learnt
    slowly.
    """
    lam_p, mu_p = points_target * exposure, points * exposure
    total = (crop_weighted_kl(lam_p, mu_p, mask)
             + crop_weighted_kl(diffuse_target * exposure, diffuse * exposure, mask))
    if point_weight:
        total = total + point_weight * _count_normalised_kl(lam_p, mu_p, mask, point_ref)
    return 2.0 * total
