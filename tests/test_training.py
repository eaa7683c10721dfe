"""Tiny tests of the training code: shapes, baseline start, losses, a few steps, ONNX round trip."""
import functools

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from xmm_enhance import evaluation as ev  # noqa: E402
from xmm_enhance.training import data as D  # noqa: E402
from xmm_enhance.training.export import export_onnx, read_metadata, update_metadata  # noqa: E402
from xmm_enhance.training.losses import dn_loss, poisson_kl, sr_loss  # noqa: E402
from xmm_enhance.training.net import EnhanceNet  # noqa: E402

CH = (4, 8)  # tiny U-Net, stride 2


def _assert_onnx_matches_torch(sess, net, shapes, n):
    for h, w in shapes:
        rate, mask = _inputs(n=n, h=h, w=w)
        got = sess.run(None, {"rate": rate.numpy(), "mask": mask.numpy()})[0]
        with torch.no_grad():
            want = net(rate, mask).numpy()
        assert np.allclose(got, want, rtol=1e-3, atol=1e-10)


def _inputs(n=2, h=64, w=64, seed=0):
    rng = np.random.default_rng(seed)
    rate = (rng.poisson(0.5, (n, 1, h, w)) / 20e3).astype(np.float32)
    mask = np.ones_like(rate)
    mask[..., :, 20:23] = 0
    return torch.from_numpy(rate * mask), torch.from_numpy(mask)


@pytest.mark.parametrize("scale", [1, 2])
def test_shapes_and_positive_everywhere(scale):
    net = EnhanceNet(scale, channels=CH)
    rate, mask = _inputs()
    out = net(rate, mask)
    assert out.shape == (2, 1, 64 * scale, 64 * scale)
    assert torch.all(out > 0)  # also in the masked columns


def test_untrained_dn_equals_mask_aware_smoothing():
    torch.manual_seed(0)
    net = EnhanceNet(1, channels=CH)
    rate, mask = _inputs(n=1)
    out = net(rate, mask)[0, 0].detach().numpy()
    ref = ev.gaussian_baseline(rate[0, 0].numpy(), mask[0, 0].numpy() > 0, 1.5)
    inner = (slice(10, -10), slice(10, -10))
    assert np.allclose(out[inner], ref[inner], rtol=0.02, atol=1e-7)


def test_losses_vanish_at_the_target():
    t = torch.full((2, 1, 16, 16), 3e-5)
    m = torch.ones_like(t)
    assert float(poisson_kl(t * 5e4, t * 5e4).abs().max()) < 1e-6
    assert float(dn_loss(t, t, m)) == pytest.approx(0.0, abs=1e-6)
    assert float(dn_loss(1.2 * t, t, m)) > 0
    t2 = torch.zeros(2, 1, 32, 32)
    t2[..., 10, 10] = 1e-3
    assert float(sr_loss(t2 + 1e-12, t2, torch.ones_like(t2))) == pytest.approx(0.0, abs=1e-4)


def test_shape_scale_weights_each_crops_shape_term():
    # two crops with the same source drawn too wide: the shape term of crop i scales with
    # shape_scale[i], the fine and block terms do not change
    t = torch.zeros(2, 1, 32, 32)
    t[..., 16, 16] = 5e-3
    wide = torch.nn.functional.avg_pool2d(t, 3, stride=1, padding=1) + 1e-9
    m = torch.ones_like(t)
    base = float(sr_loss(wide, t, m))
    one = float(sr_loss(wide, t, m, shape_weight=2.0))
    assert one > base
    same = float(sr_loss(wide, t, m, shape_weight=2.0, shape_scale=torch.ones(2)))
    assert same == pytest.approx(one, rel=1e-6)
    deep = float(sr_loss(wide, t, m, shape_weight=2.0, shape_scale=torch.tensor([1.0, 3.0])))
    assert deep - base == pytest.approx(2.0 * (one - base), rel=1e-5)


def test_buffer_crops_and_padding():
    sim = functools.partial(D.toy_simulate, shape=(80, 72))
    buf = D.FrameBuffer(sim, np.random.default_rng(0), task="SR", size=2)
    rate, mask, target, tmask = buf.sample(batch=3, crop=32)
    assert rate.shape == (3, 1, 32, 32) and target.shape == (3, 1, 64, 64)
    assert tmask.shape == target.shape
    a, (top, left) = D.pad_to_multiple(np.ones((411, 403)), 8)
    assert a.shape == (416, 408) and (top, left) == (2, 2)
    b, (t2, l2) = D.pad_to_multiple(np.ones((822, 806)), 8, scale=2)
    assert b.shape == (832, 816) and (t2, l2) == (2 * top, 2 * left)


def test_a_few_steps_reduce_the_loss_and_export_round_trip(tmp_path):
    torch.manual_seed(1)
    sim = functools.partial(D.toy_simulate, shape=(64, 64))
    buf = D.FrameBuffer(sim, np.random.default_rng(1), task="DN", size=2)
    net = EnhanceNet(1, channels=CH)
    opt = torch.optim.Adam(net.parameters(), 3e-3)
    batch = [torch.from_numpy(a) for a in buf.sample(batch=4, crop=64)]
    first = None
    for _ in range(15):
        loss = dn_loss(net(batch[0], batch[1]), batch[2], batch[3])
        first = float(loss.detach()) if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss.detach()) < first

    import onnxruntime as ort

    path = export_onnx(net.eval(), tmp_path / "m.onnx", metadata={"task": "DN", "scale": "1",
                                                                  "metrics": {"a": 1}})
    meta = read_metadata(path)
    assert meta["task"] == "DN" and meta["metrics"] == '{"a": 1}'
    update_metadata(path, {"version": "x"})
    assert read_metadata(path)["version"] == "x"
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["rate", "mask"]
    _assert_onnx_matches_torch(sess, net, ((64, 64), (32, 48)), n=2)


def test_buffer_makes_source_free_frames():
    sim = functools.partial(D.toy_simulate, shape=(48, 48))
    buf = D.FrameBuffer(sim, np.random.default_rng(4), task="SR", size=40, empty_frame_prob=0.5)
    empty = sum(not f.sr_target.any() for f in buf.frames)
    assert 8 <= empty <= 32  # toy frames always have at least one source otherwise
    none = D.FrameBuffer(sim, np.random.default_rng(4), task="SR", size=10)
    assert all(f.sr_target.any() for f in none.frames)


def test_flat_background_crops_add_background_only():
    sim = functools.partial(D.toy_simulate, shape=(48, 48), exposure=1e6)
    level = 50.0 * D.FLAT_BKG_UNIT  # large, so the Poisson noise of the check is small
    for task in ("SR", "DN"):
        buf = D.FrameBuffer(sim, np.random.default_rng(6), task=task, size=1, exposure=1e6,
                            flat_bkg_prob=1.0, flat_bkg_range=(50.0, 50.0))
        f = buf.frames[0]
        d = buf.sample_dict(batch=4, crop=48)  # the crop is the whole frame (flipped or not)
        base = f.dn_target.mean()
        # the input holds the extra flat background on the live pixels ...
        assert d["rate"].mean() == pytest.approx(base + level, rel=0.01)
        if task == "SR":  # ... the SR target (background-free) does not
            assert np.allclose(d["target"].sum(axis=(1, 2, 3)), f.sr_target.sum(), rtol=1e-5)
        else:  # ... the DN target (expected rate with background) does
            assert d["target"].mean() == pytest.approx(base + level, rel=1e-5)
    plain = D.FrameBuffer(sim, np.random.default_rng(6), task="DN", size=1, exposure=1e6)
    assert plain.sample_dict(batch=4, crop=48)["target"].mean() == pytest.approx(
        plain.frames[0].dn_target.mean(), rel=1e-5)


def test_flat_background_edge_crops_are_centred_off_axis():
    from xmm_enhance.detector import AXIS_PIXEL

    sim = functools.partial(D.toy_simulate, shape=(48, 48), exposure=1e6)
    buf = D.FrameBuffer(sim, np.random.default_rng(7), task="SR", size=1, exposure=1e6,
                        flat_bkg_prob=1.0, flat_bkg_edge=1.0)
    live = np.ones((403, 411), bool)
    thetas = []
    for _ in range(30):
        y, x = buf._edge_crop(live, 128, 0.25, (-1, -1))
        assert 0 <= y <= 403 - 128 and 0 <= x <= 411 - 128
        thetas.append(np.hypot(y + 64 - AXIS_PIXEL[0], x + 64 - AXIS_PIXEL[1]) * 4.0 / 60)
    assert min(thetas) >= D.FLAT_EDGE_THETA and np.ptp(thetas) > 0.5
    # no live crop out there: the crop already drawn stays
    yy, xx = np.mgrid[:403, :411]
    centre = np.hypot(yy - AXIS_PIXEL[0], xx - AXIS_PIXEL[1]) * 4.0 / 60 < 4.0
    assert buf._edge_crop(centre, 128, 0.25, (-1, -1)) == (-1, -1)


def test_sr_refinement_branch_starts_as_the_plain_network_and_exports(tmp_path):
    torch.manual_seed(2)
    plain = EnhanceNet(2, channels=CH)
    with torch.no_grad():  # a non-trivial plain network
        for p in plain.parameters():
            p.add_(0.05 * torch.randn_like(p))
    refined = EnhanceNet(2, channels=CH, refine=8)
    missing, unexpected = refined.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and missing and all(k.startswith("ref.") for k in missing)
    rate, mask = _inputs(n=1)
    with torch.no_grad():
        assert torch.equal(refined(rate, mask), plain(rate, mask))
        refined.ref[-1].weight.add_(0.1)  # the branch really changes the output once trained
        out = refined(rate, mask)
    assert not torch.allclose(out, plain(rate, mask))
    import onnxruntime as ort

    path = export_onnx(refined.eval(), tmp_path / "sr.onnx", metadata={"task": "SR", "scale": "2"})
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"rate": rate.numpy(), "mask": mask.numpy()})[0]
    assert got.shape == (1, 1, 128, 128)
    assert np.allclose(got, out.numpy(), rtol=1e-3, atol=1e-10)


def test_train_resume_and_warm_start_into_a_refined_network(tmp_path):
    from xmm_enhance.training import train as T

    tiny = {"channels": CH, "val_frames": 1, "buffer": 2, "crop": 32, "batch": 2, "warmup": 2,
            "total_steps": 10}
    a = tmp_path / "a"
    T.train("SR", out=tmp_path / "oa", ckpt_dir=a, steps=2, sim="toy", log_dir=tmp_path,
            cfg_overrides={**tiny, "sr_refine": 0}, export=False)
    st = torch.load(a / "SR_last.pt", weights_only=False)
    assert st["step"] == 2 and st["cfg"]["sr_refine"] == 0
    # a checkpoint written before the refinement branch existed loads as a plain network
    del st["cfg"]["sr_refine"]
    torch.save(st, a / "SR_last.pt")
    T.train("SR", out=tmp_path / "oa", ckpt_dir=a, steps=3, sim="toy", log_dir=tmp_path,
            cfg_overrides=tiny, export=False)
    st = torch.load(a / "SR_last.pt", weights_only=False)
    assert st["step"] == 3 and st["cfg"]["sr_refine"] == 0
    # warm start of a refined network from it: new run, step 0, the plain weights carried over
    b = tmp_path / "b"
    T.train("SR", out=tmp_path / "ob", ckpt_dir=b, steps=1, sim="toy", log_dir=tmp_path,
            cfg_overrides={**tiny, "sr_refine": 8}, init_from=a / "SR_last.pt")
    wb = torch.load(b / "SR_last.pt", weights_only=False)
    assert wb["step"] == 1 and "ref.0.weight" in wb["model"]
    assert (tmp_path / "ob" / "XMM-SuperRes.onnx").exists()
    with pytest.raises(T.CheckpointError, match="do not fit"):  # a DN checkpoint is no SR start
        c = tmp_path / "c"
        T.train("DN", ckpt_dir=c, steps=1, sim="toy", log_dir=tmp_path, cfg_overrides=tiny,
                export=False)
        T.train("SR", ckpt_dir=tmp_path / "d", steps=1, sim="toy", log_dir=tmp_path,
                cfg_overrides={**tiny, "sr_refine": 8}, init_from=c / "DN_last.pt",
                export=False)


def test_position_channels_follow_the_optical_axis():
    from xmm_enhance import detector
    from xmm_enhance.training.net import position_maps

    p = position_maps(0, 0, 411, 403)
    theta = detector.radius_arcmin()
    assert np.allclose(10 * np.sqrt(p[0]), theta, atol=1e-3)
    iy, ix = np.unravel_index(np.argmin(theta), theta.shape)
    assert p[0, iy, ix] < 1e-3 and p[0].max() > 4.0  # 0 on axis, > 20' in the far corners
    dy, dx = np.mgrid[:411, :403].astype(float)
    phi = np.arctan2(dy - 223.96875, dx - 243.04375)
    assert np.allclose(p[1], p[0] * np.cos(2 * phi), atol=1e-4)
    assert np.allclose(p[2], p[0] * np.sin(2 * phi), atol=1e-4)
    # a mirrored crop carries mirrored maps, with the sign of sin 2phi flipped once per mirror
    c = position_maps(100, 50, 32, 40)
    fy = position_maps(100, 50, 32, 40, flip_y=True)
    fxy = position_maps(100, 50, 32, 40, flip_y=True, flip_x=True)
    assert np.allclose(fy[:2], c[:2, ::-1]) and np.allclose(fy[2], -c[2, ::-1])
    assert np.allclose(fxy, c[:, ::-1, ::-1])
    # in the graph: the same maps for a full frame padded centrally, whatever the padded size
    for h, w in ((416, 416), (416, 408)):
        top, left = (h - 411) // 2, (w - 403) // 2
        got = EnhanceNet.frame_position(torch.zeros(2, 1, h, w))
        assert got.shape == (2, 3, h, w)
        assert np.allclose(got[1].numpy(), position_maps(-top, -left, h, w), atol=1e-5)


def test_position_network_warm_starts_exactly_and_exports(tmp_path):
    from xmm_enhance.training.train import load_widened

    torch.manual_seed(3)
    plain = EnhanceNet(2, channels=CH, refine=8)
    with torch.no_grad():
        for p in plain.parameters():
            p.add_(0.05 * torch.randn_like(p))
    net = EnhanceNet(2, channels=CH, refine=8, position=True)
    assert load_widened(net, plain.state_dict()) == []
    rate, mask = _inputs(n=1, h=48, w=40)
    with torch.no_grad():
        assert torch.equal(net(rate, mask), plain(rate, mask))
        net.unet.enc[0][0].weight[:, 5:].add_(0.2)  # once trained, position changes the output
        out = net(rate, mask)
        assert not torch.allclose(out, plain(rate, mask))
        assert not torch.allclose(out, net(rate, mask, torch.zeros(1, 3, 48, 40)))
    with pytest.raises(ValueError, match="do not fit"):
        load_widened(EnhanceNet(1, channels=CH), plain.state_dict())
    import onnxruntime as ort

    path = export_onnx(net.eval(), tmp_path / "p.onnx", metadata={"task": "SR"})
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["rate", "mask"]
    # the position maps follow the runtime shape
    _assert_onnx_matches_torch(sess, net, ((48, 40), (64, 72)), n=1)


def test_source_crops_split_between_faint_and_bright_sources():
    sim = functools.partial(D.toy_simulate, shape=(64, 64))
    srcs = [(10.0, 10.0, 50.0), (20.0, 20.0, 150.0), (30.0, 30.0, 900.0), (5.0, 5.0, 20.0)]
    picks = {}
    for share in (0.0, 0.5, 1.0):
        buf = D.FrameBuffer(sim, np.random.default_rng(5), task="SR", size=1,
                            faint_source_share=share)
        picks[share] = [buf._pick_source(srcs)[2] for _ in range(400)]
    assert set(picks[0.0]) == {900.0}  # the older recipe: bright sources only
    assert set(picks[1.0]) == {50.0, 150.0}  # never below MIN_SOURCE_COUNTS
    n_faint = sum(c < D.FAINT_COUNTS for c in picks[0.5])
    assert 150 < n_faint < 250
    buf = D.FrameBuffer(sim, np.random.default_rng(5), task="SR", size=1, position=True)
    rate, mask, target, tmask, pos = buf.sample(batch=2, crop=32)
    assert pos.shape == (2, 3, 32, 32) and pos.dtype == np.float32


def _gauss_kernel(sigma, r=24):
    y, x = np.mgrid[-r:r + 1, -r:r + 1]
    k = np.exp(-(x * x + y * y) / (2 * sigma * sigma))
    return (k / k.sum()).astype(np.float32)


def test_aligned_targets_move_sources_to_the_most_likely_pixel():
    from xmm_enhance.simulate.instrument import _add_stamp

    kf, kh = _gauss_kernel(3.0), _gauss_kernel(1.5)
    y0, x0, h, w = 10, 20, 40, 40  # region of the frame (1x)
    y2, x2 = 60, 80  # true 2x pixel of the source
    rate, T = 0.02, 20e3
    stamps = [((y2 + 0.5) / 2 - 0.5, (x2 + 0.5) / 2 - 0.5, y2, x2, rate, kf, kh)]

    def image(k, dy, dx, scale):  # the source at 2x pixel (y2+dy, x2+dx) on the region's grid
        a = np.zeros((2 * h, 2 * w), np.float32)
        _add_stamp(a, y2 + dy - 2 * y0, x2 + dx - 2 * x0, k * np.float32(rate))
        return a if scale == 2 else D._bin2(a)

    mask = np.ones((h, w), bool)
    lam = 0.5 + image(kf, 0, 0, 1).astype(np.float64) * T
    target = image(kh, 0, 0, 2)
    # counts that say "two 2x pixels down, one left": the target follows them, flux unchanged
    counts = 0.5 + image(kf, 2, -1, 1) * T
    got = D.align_point_sources(target, counts, lam, mask, (y0, x0), stamps, T)
    assert np.allclose(got, image(kh, 2, -1, 2), atol=1e-7)
    assert got.sum() == pytest.approx(target.sum(), rel=1e-5)
    # counts centred on the truth leave the target as it is (same array)
    assert D.align_point_sources(target, lam, lam, mask, (y0, x0), stamps, T) is target
    # a source whose likelihood window leaves the region is not touched
    edge = [(s[0] + 12, s[1], s[2] + 24, s[3], s[4], kf, kh) for s in stamps]
    assert D.align_point_sources(target, counts, lam, mask, (y0, x0), edge, T) is target


def test_buffer_aligns_simulated_sr_targets_and_keeps_their_flux():
    buf = D.FrameBuffer(D.simulator(), np.random.default_rng(8), task="SR", size=1, align=True,
                        source_crop_prob=1.0, faint_source_share=1.0, position=True)
    f = buf.frames[0]
    assert f.stamps and all(40 <= s[4] * f.exposure <= 5000 for s in f.stamps)
    rate, mask, target, tmask, pos = buf.sample(batch=4, crop=64)
    assert target.shape == (4, 1, 128, 128) and np.isfinite(target).all()
    lam = f.dn_target.astype(np.float64) * f.exposure
    counts = np.random.default_rng(9).poisson(lam).astype(np.float32)
    moved = D.align_point_sources(f.sr_target, counts, lam, f.mask, (0, 0), f.stamps, f.exposure)
    assert moved is not f.sr_target  # with ~40 faint sources some always move
    assert moved.sum() == pytest.approx(f.sr_target.sum(), rel=0.02)
    assert moved.min() >= -1e-9


# --- recipe 2 (issues 12 and 13): exposure input, percentile maps, SR decomposition

def _v2(scale, **kw):
    torch.manual_seed(3)
    net = EnhanceNet(scale, channels=CH, exposure_input=True, uncertainty=True,
                     decompose=scale == 2, **kw)
    for p in net.parameters():  # break the zero initialisation so that every head acts
        p.data += 0.05 * torch.randn_like(p)
    return net.eval()


@pytest.mark.parametrize("scale", [1, 2])
def test_v1_weights_load_into_v2_and_give_the_same_rate_at_20ks(scale):
    from xmm_enhance.training.train import load_widened

    torch.manual_seed(1)
    old = EnhanceNet(scale, channels=CH, refine=8 if scale == 2 else 0,
                     position=scale == 2)
    for p in old.parameters():
        p.data += 0.05 * torch.randn_like(p)
    new = EnhanceNet(scale, channels=CH, refine=8 if scale == 2 else 0, position=scale == 2,
                     exposure_input=True, uncertainty=True, decompose=True)
    missing = load_widened(new, old.state_dict())
    assert {k.split(".")[0] for k in missing} == ({"qhead", "phead"} if scale == 2 else {"qhead"})
    rate, mask = _inputs(n=2)
    with torch.no_grad():
        want = old(rate, mask)
        got = new.outputs(rate, mask, exposure=torch.tensor([20e3, 20e3]))
    assert torch.equal(got["rate"], want)
    # a fresh exposure channel has zero weights: a 100 ks input of the same counts is the
    # 20 ks prediction scaled by 20/100, not the same rate
    with torch.no_grad():
        deep = new(rate * 0.2, mask, exposure=torch.tensor([100e3, 100e3]))
    assert torch.allclose(deep, want * 0.2, rtol=1e-5)


@pytest.mark.parametrize("scale", [1, 2])
def test_v2_outputs_order_and_sum(scale):
    net = _v2(scale)
    rate, mask = _inputs(n=2)
    with torch.no_grad():
        out = net.outputs(rate, mask, exposure=torch.tensor([10e3, 100e3]))
    r = out["rate"]
    assert torch.all(out["lo68"] <= r) and torch.all(r <= out["hi68"])
    assert torch.all(out["lo68"] > 0)
    if scale == 2:
        assert torch.all(out["points"] >= 0) and torch.all(out["diffuse"] >= 0)
        assert torch.allclose(out["points"] + out["diffuse"], r, rtol=1e-6)
    else:
        assert "points" not in out
    # the exposure reaches the network: the same rate at two exposures gives two answers
    with torch.no_grad():
        a = net(rate, mask, exposure=torch.tensor([10e3, 10e3]))
        b = net(rate, mask, exposure=torch.tensor([100e3, 100e3]))
    assert not torch.allclose(a, b, rtol=1e-3)


def test_interval_scale_widens_the_percentiles_in_log_space_and_reaches_the_graph(tmp_path):
    import onnxruntime as ort

    net = _v2(2)
    with torch.no_grad():
        # a non-zero percentile head, so that the band differs from pixel to pixel
        net.qhead[-1].weight.normal_(0, 0.05, generator=torch.Generator().manual_seed(3))
    rate, mask = _inputs(n=1)
    with torch.no_grad():
        one = net.outputs(rate, mask, exposure=torch.tensor([50e3]))
        net.interval_scale = 1.5
        wide = net.outputs(rate, mask, exposure=torch.tensor([50e3]))
    r = one["rate"]
    assert torch.equal(wide["rate"], r) and torch.equal(wide["points"], one["points"])
    for k in ("lo68", "hi68"):
        assert torch.allclose(wide[k], r * (one[k] / r) ** 1.5, rtol=1e-4)
    assert torch.all(wide["lo68"] <= one["lo68"]) and torch.all(wide["hi68"] >= one["hi68"])
    path = export_onnx(net, tmp_path / "w.onnx", metadata={"task": "SR"})
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"rate": rate.numpy(), "mask": mask.numpy(),
                          "exposure": np.array([50e3], np.float32)})
    assert np.allclose(got[2], wide["hi68"].numpy(), rtol=1e-4)


def test_interval_slope_makes_the_widening_depend_on_the_exposure_in_the_graph(tmp_path):
    import onnxruntime as ort

    net = _v2(1)
    with torch.no_grad():
        net.qhead[-1].weight.normal_(0, 0.05, generator=torch.Generator().manual_seed(5))
    rate, mask = _inputs(n=1)
    net.interval_scale, net.interval_slope = 0.9, 0.2
    path = export_onnx(net, tmp_path / "s.onnx", metadata={"task": "DN"})
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for T in (10e3, 20e3, 100e3):
        with torch.no_grad():
            net.interval_slope = 0.0
            net.interval_scale = 1.0
            one = net.outputs(rate, mask, exposure=torch.tensor([T]))
            net.interval_scale, net.interval_slope = 0.9, 0.2
            got_t = net.outputs(rate, mask, exposure=torch.tensor([T]))
        k = 0.9 + 0.2 * np.log10(T / 20e3)
        r = one["rate"]
        assert torch.allclose(got_t["lo68"], r * (one["lo68"] / r) ** k, rtol=1e-4)
        assert torch.allclose(got_t["hi68"], r * (one["hi68"] / r) ** k, rtol=1e-4)
        got = sess.run(None, {"rate": rate.numpy(), "mask": mask.numpy(),
                              "exposure": np.array([T], np.float32)})
        assert np.allclose(got[1], got_t["lo68"].numpy(), rtol=1e-4)
        assert np.allclose(got[2], got_t["hi68"].numpy(), rtol=1e-4)


@pytest.mark.parametrize("scale", [1, 2])
def test_v2_onnx_export_takes_the_exposure_and_matches_torch(tmp_path, scale):
    import onnxruntime as ort

    net = _v2(scale)
    path = export_onnx(net, tmp_path / "m.onnx", metadata={"task": "SR" if scale == 2 else "DN"})
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["rate", "mask", "exposure"]
    names = [o.name for o in sess.get_outputs()]
    assert names == ["rate_out", "lo68", "hi68"] + (["points", "diffuse"] if scale == 2 else [])
    rng = np.random.default_rng(2)
    for expo in (10e3, 20e3, 100e3):
        rate = (rng.poisson(0.5 * expo / 20e3, (2, 1, 32, 40)) / expo).astype(np.float32)
        mask = np.ones_like(rate)
        got = sess.run(None, {"rate": rate, "mask": mask,
                              "exposure": np.full(2, expo, np.float32)})
        with torch.no_grad():
            want = net.outputs(torch.from_numpy(rate), torch.from_numpy(mask),
                               exposure=torch.tensor([expo, expo]))
        for name, g in zip(names, got):
            w = want["rate" if name == "rate_out" else name].numpy()
            assert np.allclose(g, w, rtol=1e-4, atol=1e-12), (name, expo)


def test_quantile_loss_is_minimised_at_the_percentiles():
    from xmm_enhance.training.losses import quantile_loss

    rng = np.random.default_rng(0)
    truth = torch.from_numpy(rng.gamma(3.0, 1e-4, (1, 1, 64, 64)).astype(np.float32))
    m = torch.ones_like(truth)
    q16, q84 = (float(np.quantile(truth.numpy(), q)) for q in (0.16, 0.84))

    def loss(lo, hi):
        return float(quantile_loss(torch.full_like(truth, lo), torch.full_like(truth, hi),
                                   truth, m))

    best = loss(q16, q84)
    for f in (0.8, 0.9, 1.1, 1.25):
        assert loss(q16 * f, q84) > best and loss(q16, q84 * f) > best


def test_buffer_draws_exposures_and_diffuse_targets():
    sim = functools.partial(D.toy_simulate, shape=(96, 96))
    buf = D.FrameBuffer(sim, np.random.default_rng(6), task="SR", size=3,
                        expo_range=(5e3, 150e3), decompose=True)
    d = buf.sample_dict(batch=64, crop=32)
    T = d["exposure"]
    assert T.shape == (64,) and T.min() >= 5e3 and T.max() <= 150e3
    # log-uniform: about half of the draws below the geometric mean (27.4 ks)
    assert 0.3 < np.mean(T < np.sqrt(5e3 * 150e3)) < 0.7
    assert d["diffuse"].shape == d["target"].shape
    assert np.all(d["diffuse"] <= d["target"] + 1e-12) and d["diffuse"].max() > 0
    # counts = Poisson(rate * T): every crop's counts are integers at its own exposure
    counts = d["rate"] * T[:, None, None, None]
    assert np.allclose(counts, np.round(counts), atol=1e-2)


def test_simulator_splits_points_from_diffuse_without_changing_the_rest():
    from xmm_enhance.simulate.instrument import simulate_observation

    a = simulate_observation(np.random.default_rng([7, 3]), kind="cluster")
    b = simulate_observation(np.random.default_rng([7, 3]), kind="cluster", decompose=True)
    assert a.sr_diffuse is None
    assert np.array_equal(a.counts, b.counts) and np.array_equal(a.sr_target, b.sr_target)
    d, t = b.sr_diffuse, b.sr_target
    assert np.all(d <= t) and d.sum() > 0.5 * t.sum()  # a cluster field: mostly diffuse
    # at the listed point sources the points' part dominates the 2x pixel
    pts = t - d
    bright = [s for s in b.meta["sources"] if s["counts"] > 200 and not s["piled"]
              and t[s["y2"], s["x2"]] > 0]  # not in a gap or bad column
    assert bright
    for s in bright:
        y, x = s["y2"], s["x2"]
        assert pts[y, x] > d[y, x]

def test_point_term_of_the_decomposition_loss_punishes_leaks_and_false_points():
    from xmm_enhance.training.losses import decomposition_loss

    pt = torch.zeros(2, 1, 32, 32)
    pt[0, 0, 16, 16] = 5e-3  # crop 0: one point source on a faint diffuse floor
    dt = torch.full_like(pt, 2e-6)
    m = torch.ones_like(pt)

    def loss(points, diffuse, w):
        return float(decomposition_loss(points, diffuse, pt, dt, m, point_weight=w))

    eps = 1e-12
    # perfect split: zero with or without the point term
    assert abs(loss(pt + eps, dt, 2.0)) < 1e-4 and abs(loss(pt + eps, dt, 0.0)) < 1e-4
    # 30 % of the source moved into the diffuse map; a knot drawn as a point in crop 1
    leak_p, leak_d = pt * 0.7 + eps, dt + pt * 0.3
    knot = pt + eps
    knot[1, 0, 8, 8] = 2e-3
    for p, d in ((leak_p, leak_d), (knot, dt)):
        plain, weighted = loss(p, d, 0.0), loss(p, d, 2.0)
        assert plain > 0 and weighted > 2 * plain


def test_halo_crops_centre_on_faint_sources_over_bright_diffuse_emission():
    sim = functools.partial(D.toy_simulate, shape=(64, 64))
    # (y, x, counts, diffuse counts around): only the second is a faint source on a halo
    srcs = [(10.0, 10.0, 50.0, 5.0), (20.0, 20.0, 30.0, 400.0), (30.0, 30.0, 900.0, 2000.0),
            (40.0, 40.0, 5.0, 400.0)]
    buf = D.FrameBuffer(sim, np.random.default_rng(5), task="SR", size=1,
                        faint_source_share=0.5, halo_source_share=0.5)
    picks = [buf._pick_source(srcs)[2] for _ in range(600)]
    n_halo = sum(p == 30.0 for p in picks)
    assert 240 < n_halo < 360  # half of the crops, and never elsewhere (30 < MIN_SOURCE_COUNTS)
    assert 5.0 not in picks  # below HALO_COUNTS
    # the counts scale with the crop's exposure: at 10x the source has 300 counts and is still
    # a halo source; at 0.4x it has 12, too few
    assert sum(buf._pick_source(srcs, 10.0)[2] == 30.0 for _ in range(200)) > 60
    assert not any(buf._pick_source(srcs, 0.4)[2] == 30.0 for _ in range(200))
    # the frames of a decomposing buffer carry each source's diffuse surroundings
    obs = D.toy_simulate(np.random.default_rng(2), decompose=True)
    obs.meta = {"sources": [{"y": 100.0, "x": 120.0, "counts": 50.0}]}
    f = D._to_frame(obs)
    want = obs.sr_diffuse[195:206, 235:246].sum(dtype=np.float64) * obs.exposure
    assert f.sources[0][3] == pytest.approx(want, rel=1e-6)
    # DN ignores the option
    assert D.FrameBuffer(sim, np.random.default_rng(5), task="DN", size=1,
                         halo_points=10, halo_source_share=1.0).halo_source_share == 0.0


# ---- the command line guards the committed checkpoints and models --------------------------
_REPO = __import__("pathlib").Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("args, says", [
    (["--ckpt-dir", "{tmp}/typo"], "no DN_last.pt to resume; pass --fresh"),
    (["--fresh", "--ckpt-dir", str(_REPO / "models" / "checkpoints")],
     "would replace the committed DN checkpoints"),
    (["--export-only", "--ckpt-dir", str(_REPO / "models" / "checkpoints"), "--which", "foo"],
     "--which foo: no"),
    (["--ckpt-dir", str(_REPO / "models" / "checkpoints"), "--steps", "10",
      "--overwrite-checkpoints"], "is at step 8208 already"),
    # a resume in the committed folder rewrote DN_best.pt, the bundled model's weights (the
    # --steps below the checkpoint's keeps a regression from training there: it is refused)
    (["--ckpt-dir", str(_REPO / "models" / "checkpoints"), "--steps", "10"],
     "would rewrite the committed DN checkpoints"),
    (["--threads", "0", "--fresh", "--ckpt-dir", "{tmp}/x"], "--threads 0"),
    (["--fresh", "--init-from", "{tmp}/nope.pt", "--ckpt-dir", "{tmp}/x"],
     "--init-from {tmp}/nope.pt: no such file"),
])
def test_training_command_refuses_what_would_lose_work(tmp_path, capsys, args, says):
    """A mistyped --ckpt-dir silently started a new run from scratch, --fresh replaced the
    committed checkpoints, and --steps below the checkpoint's step trained nothing but
    rewrote it; each is now a usage error before anything is loaded or written."""
    from xmm_enhance.training.train import main

    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    with pytest.raises(SystemExit) as exc:
        main(["--task", "DN", "--log-dir", str(tmp_path / "logs"), "--no-export", *args])
    assert exc.value.code == 2
    assert says.replace("{tmp}", str(tmp_path)) in capsys.readouterr().err
    assert sorted(p.name for p in (_REPO / "models" / "checkpoints").glob("DN_*.pt")) == \
        ["DN_best.pt", "DN_last.pt"]


@pytest.mark.parametrize("case", ["best_as_last", "init_from_other_task"])
def test_a_checkpoint_that_cannot_start_this_run_is_one_line(tmp_path, capsys, case):
    """EMA weights alone (a *_best.pt) put where a resume reads <task>_last.pt ended in a
    KeyError; the other task's checkpoint given to --init-from in a ValueError traceback."""
    import shutil

    from xmm_enhance.training.train import main

    d = tmp_path / "ck"
    d.mkdir()
    if case == "best_as_last":
        shutil.copy(_REPO / "models/checkpoints/DN_best.pt", d / "DN_last.pt")
        args = ["--total-steps", "9000"]
        says = "holds EMA weights only"
    else:
        args = ["--fresh", "--init-from", str(_REPO / "models/checkpoints/SR_best.pt")]
        says = "is it the other task's checkpoint?"
    code = main(["--task", "DN", "--ckpt-dir", str(d), "--log-dir", str(tmp_path / "logs"),
                 "--no-export", "--threads", "1", "--steps", "99999", *args])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and err[-1].startswith("error: ") and says in err[-1], err[-3:]
    assert sorted(p.name for p in d.iterdir()) == (["DN_last.pt"] if case == "best_as_last"
                                                   else [])


@pytest.mark.parametrize("damage", ["truncated", "other_task"])
def test_a_damaged_checkpoint_is_one_line(tmp_path, capsys, damage):
    import shutil

    from xmm_enhance.training.train import main

    d = tmp_path / "ck"
    d.mkdir()
    if damage == "truncated":
        (d / "DN_last.pt").write_bytes((_REPO / "models/checkpoints/DN_last.pt").read_bytes()[:999])
    else:
        shutil.copy(_REPO / "models/checkpoints/SR_last.pt", d / "DN_last.pt")
    for extra in ([], ["--export-only", "--which", "last"]):
        code = main(["--task", "DN", "--ckpt-dir", str(d), "--log-dir", str(tmp_path / "logs"),
                     "--no-export", "--threads", "1", "--steps", "99999", *extra])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 1 and err[-1].startswith(f"error: {d / 'DN_last.pt'}: ")
        assert ("not a readable checkpoint" if damage == "truncated"
                else "do not fit this network") in err[-1]
