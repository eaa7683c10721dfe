"""Tiny ONNX graphs for plumbing tests: exact, known transforms of the input rate."""
from __future__ import annotations

import json

import numpy as np


def _model(nodes, inputs, outputs, inits=(), meta=None):
    import onnx
    from onnx import TensorProto, helper

    def vi(name):
        return helper.make_tensor_value_info(name, TensorProto.FLOAT, ["N", 1, "H", "W"])

    graph = helper.make_graph(nodes, "plumbing", [vi(n) for n in inputs],
                              [vi(o) for o in outputs], initializer=list(inits))
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    for k, v in (meta or {}).items():
        e = m.metadata_props.add()
        e.key, e.value = k, v if isinstance(v, str) else json.dumps(v)
    onnx.checker.check_model(m)
    return m


def meta_for(task, **over):
    meta = {"task": task, "scale": "2" if task == "SR" else "1", "version": "test-0",
            "input_exposure_ks": "20", "target_exposure_ks": "20" if task == "SR" else "50",
            "input_pixel_arcsec": "4", "output_pixel_arcsec": "2" if task == "SR" else "4",
            "band_kev": "0.5-2.0"}
    meta.update(over)
    return meta


def identity_dn(path, *, with_mask=True, **meta_over):
    """DN stand-in: output = input rate."""
    from onnx import helper
    inputs = ["rate", "mask"] if with_mask else ["rate"]
    nodes = [helper.make_node("Identity", ["rate"], ["out"])]
    m = _model(nodes, inputs, ["out"], meta=meta_for("DN", **meta_over))
    path.write_bytes(m.SerializeToString())
    return path


def replicate_sr(path, **meta_over):
    """SR stand-in: each input pixel replicated 2x2 and divided by 4 (flux conserving)."""
    from onnx import helper, numpy_helper
    scales = numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")
    quarter = numpy_helper.from_array(np.array(0.25, np.float32), "quarter")
    nodes = [helper.make_node("Resize", ["rate", "", "scales"], ["up"], mode="nearest"),
             helper.make_node("Mul", ["up", "quarter"], ["out"])]
    m = _model(nodes, ["rate", "mask"], ["out"], inits=[scales, quarter],
               meta=meta_for("SR", **meta_over))
    path.write_bytes(m.SerializeToString())
    return path


def offset_model(path, task, offset, **meta_over):
    """A model whose output goes negative: the identity (DN) or 2x replication (SR) of the input
    rate minus ``offset`` (count/s per output pixel)."""
    from onnx import helper, numpy_helper
    inits = [numpy_helper.from_array(np.array(offset, np.float32), "offset")]
    if task == "SR":
        inits += [numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales"),
                  numpy_helper.from_array(np.array(0.25, np.float32), "quarter")]
        nodes = [helper.make_node("Resize", ["rate", "", "scales"], ["up"], mode="nearest"),
                 helper.make_node("Mul", ["up", "quarter"], ["same"])]
    else:
        nodes = [helper.make_node("Identity", ["rate"], ["same"])]
    nodes.append(helper.make_node("Sub", ["same", "offset"], ["out"]))
    m = _model(nodes, ["rate", "mask"], ["out"], inits=inits, meta=meta_for(task, **meta_over))
    path.write_bytes(m.SerializeToString())
    return path


def exposure_aware(path, task, *, point_share=0.25, **meta_over):
    """Stand-in for a recipe-2 model: inputs ``rate``, ``mask``, ``exposure`` [N]; outputs
    ``rate_out`` (the input rate, 2x replicated / 4 for SR), ``lo68`` = 0.5 x it,
    ``hi68`` = (1 + 20 ks / exposure) x it (so the exposure the caller fed can be read back)
    and, for SR, ``points`` = ``point_share`` x it and ``diffuse`` = the rest."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    c = lambda name, v: numpy_helper.from_array(np.array(v, np.float32), name)  # noqa: E731
    inits = [c("half", 0.5), c("ref", 20e3), c("one", 1.0), c("share", point_share),
             c("rest", 1.0 - point_share), c("shape4", 0)]
    inits[-1] = numpy_helper.from_array(np.array([-1, 1, 1, 1], np.int64), "shape4")
    if task == "SR":
        inits += [c("scales", [1, 1, 2, 2]), c("quarter", 0.25)]
        nodes = [helper.make_node("Resize", ["rate", "", "scales"], ["up"], mode="nearest"),
                 helper.make_node("Mul", ["up", "quarter"], ["rate_out"])]
    else:
        nodes = [helper.make_node("Identity", ["rate"], ["rate_out"])]
    nodes += [helper.make_node("Mul", ["rate_out", "half"], ["lo68"]),
              helper.make_node("Div", ["ref", "exposure"], ["r"]),
              helper.make_node("Add", ["r", "one"], ["f"]),
              helper.make_node("Reshape", ["f", "shape4"], ["f4"]),
              helper.make_node("Mul", ["rate_out", "f4"], ["hi68"])]
    outputs = ["rate_out", "lo68", "hi68"]
    if task == "SR":
        nodes += [helper.make_node("Mul", ["rate_out", "share"], ["points"]),
                  helper.make_node("Mul", ["rate_out", "rest"], ["diffuse"])]
        outputs += ["points", "diffuse"]

    def vi(name):
        return helper.make_tensor_value_info(name, TensorProto.FLOAT, ["N", 1, "H", "W"])

    graph = helper.make_graph(nodes, "exposure_aware", [vi("rate"), vi("mask"),
                              helper.make_tensor_value_info("exposure", TensorProto.FLOAT,
                                                            ["N"])],
                              [vi(o) for o in outputs], initializer=inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    meta = meta_for(task, input_exposure_ks="5-150",
                    target_exposure_ks="inf (noise-free)", **meta_over)
    for k, v in meta.items():
        e = m.metadata_props.add()
        e.key, e.value = k, v
    onnx.checker.check_model(m)
    path.write_bytes(m.SerializeToString())
    return path
