"""U-Net for DN and SR of pn count-rate images, with all normalisation inside the module.

The module takes the count rate itself (counts/s per 4" pixel) and the detector mask, as the ONNX
contract of design §4.4 asks, and returns a count rate:

* input features (computed in the graph): Anscombe-stretched counts at the input exposure, the
  mask, and the logs of three mask-aware Gaussian smoothings (sigma 1.5, 4 and 12 px) of the counts
  (normalised convolution, so chip gaps, bad columns and crop borders do not bias them);
* the network output is a log-rate *residual* on top of the sigma-1.5 smoothing (zero-initialised
  last layer): training starts from the classical Gaussian baseline and only learns corrections;
* output rate = ``exp(log baseline + residual)``, so it is positive everywhere, also in masked
  pixels (gaps, bad columns) where photons may still arrive in other observations.

For SR a PixelShuffle head predicts the 2x residual on top of the nearest-neighbour 2x baseline
(rate per 2" pixel, i.e. the 1x baseline / 4). With ``refine > 0`` a deeper sub-pixel branch
(three 3x3 convolutions of ``refine`` channels on the finest U-Net features and the head's output,
ending in 4 sub-pixel channels, i.e. the 2x2 output pixels of each input pixel) adds a second
log-residual. It works on the 1x grid, which for 3x3 kernels is as expressive as convolutions on
the shuffled 2x grid and costs 5x less on the CPU. Its last layer is zero-initialised, so a
network without it can be loaded into one with it (``strict=False``) and gives the same output.

With ``position=True`` three more input channels tell the network where each pixel lies relative
to the optical axis: ``theta^2``, ``theta^2 cos 2phi`` and ``theta^2 sin 2phi`` (``theta`` in units
of 10 arcmin, ``phi`` the azimuth of the pixel seen from the axis). The PSF widens with
``theta^2`` and its core stretches tangentially by ``1 + A theta^2`` along ``phi + 90 deg``, so
these are the quantities the off-axis PSF depends on, and they are smooth and flip-covariant
(a mirror flips the sign of the third). In the exported graph they are computed from the input's
shape for a full pn frame padded centrally (design §4.3), so the ONNX contract (inputs ``rate``
and ``mask``) is unchanged; in training, crops pass their own maps (:func:`position_maps`).

Version-2 options (issues 12 and 13), each zero-initialised so that a version-1 network loads
into a version-2 one (:func:`xmm_enhance.training.train.load_widened`) and computes the same
rate at 20 ks:

* ``exposure_input``: the input's exposure ``T`` (s, one number per image) turns the rate into
  counts (instead of the fixed 20 ks) and enters as one more input channel,
  ``log10(T / 20 ks)`` (last channel), so the network knows the noise level of its input;
* ``uncertainty``: a head predicts, for every output pixel, the 16th and 84th percentiles of the
  true rate given the input, as ``rate * exp(-softplus(a))`` and ``rate * exp(softplus(b))``
  (so ``lo68 <= rate <= hi68``), trained with a quantile (pinball) loss;
* ``decompose`` (SR): a head predicts each output pixel's point-source fraction ``p``
  (a sigmoid), and ``points = p * rate``, ``diffuse = (1 - p) * rate`` sum to the SR rate.

:meth:`EnhanceNet.outputs` returns all of them as a dict; ``forward`` returns the rate only.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .. import detector

__all__ = ["GaussianSmooth", "UNet", "EnhanceNet", "count_parameters", "position_maps",
           "AXIS_PIXEL"]

#: Floor (counts per input pixel at the input exposure) under the log of the baselines.
COUNT_FLOOR = 1e-3
#: Smallest log-space widening of the percentile maps an exposure-dependent calibration gives.
INTERVAL_SCALE_MIN = 0.25
#: Reference exposure (s) of the exposure channel ``log10(T / EXPOSURE_REF)``.
EXPOSURE_REF = 20e3
#: Initial bias of the quantile head: softplus(-1.0) = 0.31, a +-30 % band (log).
QUANTILE_INIT = -1.0

#: Optical axis on the 1x pn grid (0-based row, column of pixel centres; fractional).
AXIS_PIXEL = detector.AXIS_PIXEL
#: Unit of the offsets in the position channels: 10 arcmin in 1x (4") pixels.
_POS_UNIT_PX = 10 * 60.0 / (detector.pixel_size_arcsec())
N_POSITION = 3


def _position_channels(dy, dx):
    return [dy * dy + dx * dx, dx * dx - dy * dy, 2.0 * dx * dy]


def position_maps(y0, x0, h, w, *, flip_y=False, flip_x=False):
    """Position channels [3, h, w] (float32) of the crop ``[y0:y0+h, x0:x0+w]`` of a pn frame.

    ``flip_y`` / ``flip_x``: the crop was mirrored (as the data); the maps are mirrored with it and
    the ``sin 2phi`` channel changes sign once per mirror, as it would for a mirrored detector.
    """
    dy = (np.arange(y0, y0 + h, dtype=np.float64) - AXIS_PIXEL[0]) / _POS_UNIT_PX
    dx = (np.arange(x0, x0 + w, dtype=np.float64) - AXIS_PIXEL[1]) / _POS_UNIT_PX
    out = np.stack([c * np.ones((h, w)) for c in _position_channels(dy[:, None], dx[None, :])])
    if flip_y:
        out = out[:, ::-1]
    if flip_x:
        out = out[:, :, ::-1]
    if flip_y != flip_x:
        out[2] *= -1
    return np.ascontiguousarray(out, dtype=np.float32)


class GaussianSmooth(nn.Module):
    """Separable Gaussian convolution with zero padding (fixed weights, exported as Conv)."""

    def __init__(self, sigma: float):
        super().__init__()
        r = int(math.ceil(4 * sigma))
        x = torch.arange(-r, r + 1, dtype=torch.float32)
        k = torch.exp(-x * x / (2 * sigma * sigma))
        k = k / k.sum()
        self.register_buffer("kx", k.view(1, 1, 1, -1), persistent=False)
        self.register_buffer("ky", k.view(1, 1, -1, 1), persistent=False)
        self.r = r

    def forward(self, x):
        """Smooth a [N, 1, H, W] tensor."""
        x = F.conv2d(x, self.kx, padding=(0, self.r))
        return F.conv2d(x, self.ky, padding=(self.r, 0))


def _block(cin, cout):
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.LeakyReLU(0.1),
                         nn.Conv2d(cout, cout, 3, padding=1), nn.LeakyReLU(0.1))


class UNet(nn.Module):
    """Plain U-Net: ``len(channels)`` levels, stride ``2**(len(channels)-1)``."""

    def __init__(self, cin: int, channels=(16, 32, 64, 96)):
        super().__init__()
        self.channels = tuple(channels)
        self.enc = nn.ModuleList()
        c = cin
        for ch in channels:
            self.enc.append(_block(c, ch))
            c = ch
        self.up = nn.ModuleList()
        self.dec = nn.ModuleList()
        for lo, hi in zip(reversed(channels[:-1]), reversed(channels[1:])):
            self.up.append(nn.Conv2d(hi, lo, 1))
            self.dec.append(_block(2 * lo, lo))

    @property
    def stride(self):
        """Input sizes must be multiples of this."""
        return 2 ** (len(self.channels) - 1)

    def forward(self, x):
        """Features [N, channels[0], H, W] of an input [N, cin, H, W]."""
        skips = []
        for i, enc in enumerate(self.enc):
            if i:
                x = F.avg_pool2d(x, 2)
            x = enc(x)
            skips.append(x)
        for up, dec, skip in zip(self.up, self.dec, reversed(skips[:-1])):
            x = F.interpolate(up(x), scale_factor=2.0, mode="nearest")
            x = dec(torch.cat([x, skip], dim=1))
        return x


class EnhanceNet(nn.Module):
    """Rate in, rate out: DN (``scale=1``) or SR (``scale=2``) network.

    Parameters
    ----------
    scale : int
        1 (DN, same grid) or 2 (SR, 2x grid, rate per 2" pixel).
    exposure : float
        Input exposure (s) the network was trained for: turns the rate into counts.
    channels : tuple of int
        U-Net widths per level.
    refine : int
        SR only: channels of the sub-pixel refinement branch (on the 1x grid; 0: none).
    position : bool
        Add the three position channels (see the module docstring) to the input features.
    exposure_input : bool
        Take the exposure per image (``exposure`` argument, s) and add ``log10(T / 20 ks)`` as
        the last input channel; ``exposure`` above is then the default and the reference.
    uncertainty : bool
        Add the 16th/84th-percentile head (``lo68``, ``hi68`` of :meth:`outputs`).
    decompose : bool
        SR only: add the point-source fraction head (``points``, ``diffuse`` of :meth:`outputs`).
    """

    def __init__(self, scale: int = 1, exposure: float = 20e3, channels=(16, 32, 64, 96),
                 refine: int = 0, position: bool = False, exposure_input: bool = False,
                 uncertainty: bool = False, decompose: bool = False):
        super().__init__()
        if scale not in (1, 2):
            raise ValueError(f"scale must be 1 or 2, got {scale}")
        self.scale = scale
        self.exposure = float(exposure)
        self.smooth = nn.ModuleList([GaussianSmooth(s) for s in (1.5, 4.0, 12.0)])
        self.position = bool(position)
        self.exposure_input = bool(exposure_input)
        self.unet = UNet(5 + (N_POSITION if self.position else 0)
                         + (1 if self.exposure_input else 0), channels)
        c0 = channels[0]
        self.head = nn.Conv2d(c0, scale * scale, 3, padding=1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        ss = scale * scale
        self.uncertainty = bool(uncertainty)
        #: log-space widening of [lo68, hi68] about the rate (not trained: a calibration set at
        #: export, ``export_task(interval_scale=)``; 1 = the trained percentiles) at the
        #: reference exposure, and its change per decade of exposure (``interval_slope``): the
        #: widening at input exposure T is ``max(INTERVAL_SCALE_MIN, interval_scale +
        #: interval_slope log10(T / EXPOSURE_REF))``
        self.interval_scale = 1.0
        self.interval_slope = 0.0
        if self.uncertainty:
            # [a (ss sub-pixels), b (ss sub-pixels)] on the 1x grid, from the features and the
            # rate head's output; starts at a +-30 % band
            self.qhead = nn.Sequential(nn.Conv2d(c0 + ss, 32, 3, padding=1), nn.LeakyReLU(0.1),
                                       nn.Conv2d(32, 2 * ss, 3, padding=1))
            nn.init.zeros_(self.qhead[-1].weight)
            nn.init.constant_(self.qhead[-1].bias, QUANTILE_INIT)
        self.decompose = bool(decompose) and scale == 2
        if self.decompose:
            self.phead = nn.Sequential(nn.Conv2d(c0 + ss, 32, 3, padding=1), nn.LeakyReLU(0.1),
                                       nn.Conv2d(32, ss, 3, padding=1))
            nn.init.zeros_(self.phead[-1].weight)
            nn.init.zeros_(self.phead[-1].bias)
        self.refine = int(refine) if scale == 2 else 0
        if self.refine:
            r = self.refine
            self.ref = nn.Sequential(nn.Conv2d(c0 + 4, r, 3, padding=1), nn.LeakyReLU(0.1),
                                     nn.Conv2d(r, r, 3, padding=1), nn.LeakyReLU(0.1),
                                     nn.Conv2d(r, 4, 3, padding=1))
            nn.init.zeros_(self.ref[-1].weight)
            nn.init.zeros_(self.ref[-1].bias)

    @property
    def stride(self):
        """Input sizes must be multiples of this."""
        return self.unet.stride

    def baselines(self, counts, mask):
        """Mask-aware smoothings of the counts: list of [N, 1, H, W] (counts per pixel)."""
        out = []
        for sm in self.smooth:
            num = sm(counts * mask)
            den = sm(mask)
            out.append(num / (den + 1e-4))
        return out

    @staticmethod
    def frame_position(rate):
        """Position channels [N, 3, H, W] for full pn frames padded centrally to H x W.

        Built from the input's shape with tensor operations only (cumulative sums of ones), so
        the exported graph keeps dynamic H and W.
        """
        ones = torch.ones_like(rate[:, :1])
        yi = torch.cumsum(ones, dim=2) - 1.0
        xi = torch.cumsum(ones, dim=3) - 1.0
        top = torch.floor((ones.sum(dim=2, keepdim=True) - detector.PN_SHAPE[0]) * 0.5)
        left = torch.floor((ones.sum(dim=3, keepdim=True) - detector.PN_SHAPE[1]) * 0.5)
        dy = (yi - top - AXIS_PIXEL[0]) / _POS_UNIT_PX
        dx = (xi - left - AXIS_PIXEL[1]) / _POS_UNIT_PX
        return torch.cat(_position_channels(dy, dx), dim=1)

    def _exposure(self, rate, exposure):
        """Exposure [N, 1, 1, 1] (s) as a tensor of ``rate``'s dtype."""
        if exposure is None or not self.exposure_input:
            return torch.full_like(rate[:, :1, :1, :1], self.exposure)
        if not torch.is_tensor(exposure):
            exposure = torch.as_tensor(exposure, dtype=rate.dtype)
        return exposure.to(rate.dtype).reshape(-1, 1, 1, 1) * torch.ones_like(rate[:, :1, :1, :1])

    def forward(self, rate, mask, pos=None, exposure=None):
        """Predicted rate [N, 1, sH, sW] (counts/s per output pixel) from rate and mask [N,1,H,W].

        ``pos``: position channels [N, 3, H, W] of crops (:func:`position_maps`); ``None`` means
        full frames padded centrally (:meth:`frame_position`). Ignored without ``position``.
        ``exposure``: [N] input exposures (s); ``None``: the reference exposure. Ignored without
        ``exposure_input``.
        """
        return self.outputs(rate, mask, pos=pos, exposure=exposure, extra=False)["rate"]

    def outputs(self, rate, mask, pos=None, exposure=None, extra=True):
        """Dict of [N, 1, sH, sW] tensors: ``rate`` and, with ``extra`` and the matching heads,
        ``lo68``, ``hi68`` (16th/84th percentiles), ``points`` and ``diffuse`` (SR)."""
        m = (mask > 0.5).to(rate.dtype)
        T = self._exposure(rate, exposure)
        counts = torch.clamp(rate, min=0.0) * T * m
        b1, b4, b12 = self.baselines(counts, m)
        lb1 = torch.log(b1 + COUNT_FLOOR)
        chans = [
            (2.0 * torch.sqrt(counts + 0.375) - 1.2247) * m * 0.25,
            m,
            lb1 * 0.25,
            torch.log(b4 + COUNT_FLOOR) * 0.25,
            torch.log(b12 + COUNT_FLOOR) * 0.25,
        ]
        if self.position:
            chans.append(self.frame_position(rate) if pos is None else pos)
        if self.exposure_input:
            chans.append(torch.log10(T / EXPOSURE_REF) * torch.ones_like(m))
        f = self.unet(torch.cat(chans, dim=1))
        res = self.head(f)
        if self.scale == 2:
            if self.refine:
                res = res + self.ref(torch.cat([f, res * 0.25], dim=1))
            lb1 = F.interpolate(lb1, scale_factor=2.0, mode="nearest") - math.log(4.0)
        logc = torch.clamp(lb1 + self._shuffle(res), min=-25.0, max=25.0)
        out = {"rate": torch.exp(logc) / T}
        if not extra:
            return out
        if self.uncertainty or self.decompose:
            g = torch.cat([f, res * 0.25], dim=1)
        if self.uncertainty:
            q = self.qhead(g)
            ss = self.scale * self.scale
            a, b = self._shuffle(q[:, :ss]), self._shuffle(q[:, ss:])
            k = self.interval_scale
            if self.interval_slope:
                k = torch.clamp(k + self.interval_slope * torch.log10(T / EXPOSURE_REF),
                                min=INTERVAL_SCALE_MIN)
            out["lo68"] = torch.exp(logc - k * F.softplus(a)) / T
            out["hi68"] = torch.exp(torch.clamp(logc + k * F.softplus(b), max=30.0)) / T
        if self.decompose:
            p = torch.sigmoid(self._shuffle(self.phead(g)))
            out["points"] = out["rate"] * p
            out["diffuse"] = out["rate"] * (1.0 - p)
        return out

    def _shuffle(self, x):
        return F.pixel_shuffle(x, 2) if self.scale == 2 else x


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
