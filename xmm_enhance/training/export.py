"""ONNX export of :class:`~xmm_enhance.training.net.EnhanceNet` with the design §4.4 contract.

Graph inputs ``rate`` and ``mask`` (float32 [N, 1, H, W], counts/s per 4" pixel and 1 = detector
pixel), one output ``rate_out`` [N, 1, sH, sW] (counts/s per output pixel; ONNX names must be
unique, so it cannot also be called ``rate``); N, H, W dynamic (H, W multiples of the network stride).
Recipe-2 networks also take ``exposure`` (float32 [N], s: the input's ``EXPOSURE``) and add the
outputs ``lo68``, ``hi68`` (16th/84th percentiles of the true rate) and, for SR, ``points`` and
``diffuse`` (summing to ``rate_out``), all [N, 1, sH, sW] in counts/s per output pixel.
All normalisation is inside the graph. ``metadata_props`` carry task, scale, exposures, pixel
sizes, band, version, training recipe and commit, simulator version and metrics (JSON).
"""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import torch

__all__ = ["MODEL_NAMES", "export_onnx", "update_metadata", "read_metadata", "git_commit"]

#: File names of the bundled models per task.
MODEL_NAMES = {"DN": "XMM-DeNoise.onnx", "SR": "XMM-SuperRes.onnx"}


class _RenameOutput(torch.nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, rate, mask):
        return self.net(rate, mask)


class _AllOutputs(torch.nn.Module):
    """Recipe-2 graph: inputs ``rate``, ``mask``, ``exposure`` [N] (s); outputs ``rate_out`` and
    the network's extra maps (:func:`output_names`)."""

    def __init__(self, net):
        super().__init__()
        self.net = net
        self.names = output_names(net)[1:]

    def forward(self, rate, mask, exposure):
        out = self.net.outputs(rate, mask, exposure=exposure)
        return (out["rate"],) + tuple(out[n] for n in self.names)


def output_names(net):
    """ONNX output names of ``net``: ``rate_out`` then ``lo68``, ``hi68``, ``points``,
    ``diffuse`` for the heads it has."""
    names = ["rate_out"]
    if getattr(net, "uncertainty", False):
        names += ["lo68", "hi68"]
    if getattr(net, "decompose", False):
        names += ["points", "diffuse"]
    return names


def _inputs(net, rate, mask, exposure):
    """Graph inputs for ``net`` as numpy arrays (``exposure`` only where the net takes it)."""
    feed = {"rate": rate, "mask": mask}
    if getattr(net, "exposure_input", False):
        feed["exposure"] = np.full((rate.shape[0],), exposure, np.float32)
    return feed


def git_commit(repo=None) -> str:
    """Current commit of the repository (``unknown`` outside git)."""
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo or Path(__file__).parent,
                              capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def export_onnx(net, path, *, metadata: dict, opset=17, check=True):
    """Export ``net`` (eval mode, CPU) to ``path`` and attach ``metadata`` as metadata_props.

    Parameters
    ----------
    net : EnhanceNet
    path : path-like
        Written atomically (temporary name, then renamed).
    metadata : dict
        Values are stored as strings (dicts/lists as JSON).
    opset : int
    check : bool
        Run the exported graph in onnxruntime on a 416 x 416 input and compare with torch.

    Returns
    -------
    pathlib.Path
    """
    import onnx

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    net = net.eval().cpu()
    s = net.stride
    rate = torch.full((1, 1, 4 * s, 4 * s), 2e-5)
    mask = torch.ones_like(rate)
    names = output_names(net)
    axes = {"rate": {0: "N", 2: "H", 3: "W"}, "mask": {0: "N", 2: "H", 3: "W"}}
    axes.update({n: {0: "N", 2: "sH", 3: "sW"} for n in names})
    if getattr(net, "exposure_input", False):
        module, args, inputs = _AllOutputs(net), (rate, mask, torch.full((1,), 20e3)), \
            ["rate", "mask", "exposure"]
        axes["exposure"] = {0: "N"}
    else:
        module, args, inputs = _RenameOutput(net), (rate, mask), ["rate", "mask"]
        names = names[:1]
    import warnings

    with torch.no_grad(), warnings.catch_warnings():
        # the TorchScript exporter is chosen on purpose (dynamic H, W without onnxscript);
        # torch announces its deprecation on every call
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.onnx")
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export",
                                category=DeprecationWarning)
        torch.onnx.export(module, args, str(tmp), dynamo=False, input_names=inputs,
                          output_names=names, dynamic_axes=axes, opset_version=opset,
                          do_constant_folding=True)
    model = onnx.load(str(tmp))
    onnx.checker.check_model(model)
    _set_props(model, metadata)
    onnx.save(model, str(tmp))
    if check:
        _check(net, tmp)
    tmp.replace(path)
    return path


def _set_props(model, metadata):
    del model.metadata_props[:]
    for k, v in metadata.items():
        e = model.metadata_props.add()
        e.key = str(k)
        e.value = v if isinstance(v, str) else json.dumps(v)


def _check(net, path):
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    h = w = 416 if net.stride <= 416 and 416 % net.stride == 0 else 8 * net.stride
    exposures = (10e3, 20e3, 100e3) if getattr(net, "exposure_input", False) else (net.exposure,)
    for expo in exposures:
        rate = (rng.poisson(0.5 * expo / 20e3, (1, 1, h, w)) / expo).astype(np.float32)
        mask = np.ones_like(rate)
        mask[..., :, 100:103] = 0
        got = sess.run(None, _inputs(net, rate, mask, expo))
        with torch.no_grad():
            out = net.outputs(torch.from_numpy(rate), torch.from_numpy(mask),
                              exposure=torch.tensor([expo]))
        want = [out["rate"]] + [out[n] for n in output_names(net)[1:]
                                if getattr(net, "exposure_input", False)]
        for g, w_ in zip(got, want):
            w_ = w_.numpy()
            if g.shape != w_.shape or not np.allclose(g, w_, rtol=1e-3, atol=1e-9):
                raise RuntimeError(f"ONNX export of {path} differs from torch at {expo:g} s "
                                   f"(max abs diff {np.abs(g - w_).max():.3g})")


def update_metadata(path, updates: dict):
    """Merge ``updates`` into the metadata_props of an ONNX file (rewritten atomically)."""
    import onnx

    path = Path(path)
    model = onnx.load(str(path))
    meta = {p.key: p.value for p in model.metadata_props}
    for k, v in updates.items():
        meta[k] = v if isinstance(v, str) else json.dumps(v)
    _set_props(model, meta)
    tmp = path.with_name(path.name + ".tmp")
    onnx.save(model, str(tmp))
    tmp.replace(path)


def read_metadata(path) -> dict:
    """metadata_props of an ONNX file as a dict of strings."""
    import onnx

    return {p.key: p.value for p in onnx.load(str(path)).metadata_props}
