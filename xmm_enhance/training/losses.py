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

__all__ = ["poisson_kl", "crop_weighted_kl", "dn_loss", "sr_loss"]


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
            shape_weight=0.0, shape_ref=100.0):
    """SR loss: expected deviance on the 2x grid plus the same on ``block``-summed maps.

    The second term (deviance of block sums, 8" for ``block = 4``) ties the local flux of the
    prediction to the truth's (flux conservation) without asking for the exact sub-pixel shape.
    The optional third term (``shape_weight``) is each crop's summed KL divided by its total
    expected counts plus ``shape_ref``: a point source is a tiny share of a crop's mean KL, so
    without it the sharpening of sources is learnt slowly; in source-free crops the same term
    punishes any predicted counts (false sources).

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
        kl_sum = (poisson_kl(lam, mu) * mask).sum(dim=(1, 2, 3))
        total = total + shape_weight * (kl_sum / ((lam * mask).sum(dim=(1, 2, 3)) + shape_ref)).mean()
    return 2.0 * total
