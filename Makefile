# Two commands work on a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test bench models venv clean

$(STAMP): requirements.txt requirements-test.txt pyproject.toml
	@$(PY) -c 'import sys; sys.exit(sys.version_info < (3, 10))' || \
		{ echo "error: $(PY) is Python < 3.10; run with PY=python3.10 (or newer)" >&2; exit 1; }
	test -x $(VPY) || $(PY) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q -r requirements-test.txt
	$(VPY) -m pip install -q --no-deps -e .
	touch $(STAMP)

venv: $(STAMP)

$(VENV)/.train: $(STAMP) requirements-train.txt
	$(VPY) -m pip install -q -r requirements-train.txt
	touch $(VENV)/.train

demo: $(STAMP)
	$(VPY) -m xmm_enhance.demo --outdir demo_output

test: $(STAMP)
	MPLBACKEND=Agg $(VPY) -m pytest -q

bench: $(STAMP)
	$(VPY) benchmarks/bench_inference.py
	$(VPY) benchmarks/bench_image.py

# Retrain both networks from scratch (fresh checkpoints in runs/checkpoints, so the committed
# resumable ones in models/checkpoints are left alone) with the final recipes; exports to models/.
# DN: 7000 steps (~1 h on 2 CPU cores). SR, in five stages as the bundled model was made: the
# plain U-Net for 20740 steps (~2.1 h), then the sub-pixel refinement branch added
# (zero-initialised) and the whole network trained 8103 more steps of an 11000-step schedule
# (~1.2 h), then a restarted schedule of 10000 steps stopped at 7457 (~1.5 h; the bundled model
# met simulator 0.14.0's off-axis PSF elongation there, from scratch every stage uses it), then
# position channels and faint-source crops, 5233 steps of a 10000-step schedule (~0.9 h), then
# aligned SR targets, 4406 steps of a 6000-step schedule (~1 h); then recipe 2 for both.
# See models/MODEL_CARD.md.
# --flat-bkg 0: the bundled models predate the flat-background crops (session 12 recipe default)
TRAIN := $(VPY) -m xmm_enhance.training.train --fresh --out models/ --flat-bkg 0
# recipe 1 (fixed 20 ks inputs, rate maps only): every stage made before session 6
V1 := --expo-range 0 --uncertainty 0 --decompose 0
# the SR stages made before session 5: no position channels, no aligned targets, bright-source crops
SR_OLD := --position 0 --align 0 --faint-share 0 $(V1)
# recipe 2 (session 6, issues 12 and 13): exposure input (5-150 ks crops), percentile heads and
# the SR point/diffuse head, warm-started from the recipe-1 networks; see models/MODEL_CARD.md
# for the step counts of the bundled models
V2_DN_STEPS ?= 8208
# SR: 2807 steps of an 8000-step cosine, then (session 7) the per-crop point-component term
# from step 2807 and the schedule shortened to 7000 steps at step 4823; bundled: step 7002
V2_SR_PLAIN_STEPS := 2807
V2_SR_POINT_STEPS := 4823
V2_SR7_STEPS := 7002
# session 8: from 7002 the SR shape term weighted per crop by max(1, T_in / 20 ks) (an 11500-step
# schedule to 7292, then a 13000-step one); bundled: step 10487, its percentile maps widened
# x1.3 in log space at export (chosen on simulations, see the model card); session 10 ran it on
# to 13000 and kept 10487 (a POINTS clump above the flat-field bar at 50 ks)
V2_SR_STEPS ?= 10487
TRAIN_ON := $(VPY) -m xmm_enhance.training.train --out models/ --flat-bkg 0
# sessions 12-13: from 10487 (its optimiser state) with flat-background crops, share 0.1 at 1-4x
# the nominal level to the schedule's end at 13000, then share 0.15 with half of them centred
# beyond 9' off axis to 14400 (lr at its floor, 2e-5); bundled: step 14400, its percentile maps
# widened x(1.45 - 0.40 log10(T / 20 ks)) in log space at export and the aperture rule's scale
# 0.87 + 0.04 log10(T / 20 ks) (session 15, chosen on simulations; x1.3 and 0.92 before)
TRAIN_FLAT := $(VPY) -m xmm_enhance.training.train --out models/ --flat-bkg-range 1,4
V2_SR_FLAT_STEPS ?= 14400
# session 18 (issue 13, faint sources on bright halos): a new run warm-started from the 14400 EMA
# weights (fresh AdamW, lr 1.5e-4 cosine to 2e-5, the same flat-background crops), ~15 extra
# sources per field tracing the light of clusters and galaxies, a share of the source crops on
# those over bright diffuse emission: 0.3 to step 2284 of a 6000-step schedule, then 0.5 on an
# 11000-step schedule to its end; bundled: step 11000 (version 2.25400 = 14400 + 11000)
TRAIN_HALO := $(TRAIN_FLAT) --flat-bkg 0.15 --flat-bkg-edge 0.5 --halo-points 15 --lr 1.5e-4 \
	--lr-min 2e-5
# the exported model's training_history metadata
SR_HISTORY := SR line: recipe-2 stages to 10487 (bundled sessions 8-12; see the model card), then from its \
	optimiser state with flat-background crops: share 0.1 at 1-4x nominal to 13000 (sessions \
	12-13), share 0.15 at 1-4x with half of them centred beyond 9 arcmin off axis to 14400 \
	(session 13); EMA of step 14400; percentile maps widened at export x(1.45 - 0.40 log10(T / \
	20 ks)) in log space (session 15; x1.3 at every exposure before), aperture rule c = 0.87 + \
	0.04 log10(T / 20 ks) (0.92 before; by the aperture's rate since session 28, metadata \
	aperture_interval_*); then (session 18) a warm start from the 14400 EMA with \
	fresh AdamW, lr 1.5e-4 cosine to 2e-5, the same flat-background crops, 15 halo sources per \
	simulated field and halo-centred crops (share 0.3 to step 2284 of a 6000-step schedule, then \
	0.5 on an 11000-step schedule to its end); EMA of that run's step 11000 (14400 + 11000 = \
	25400 steps on this line)
# aperture rule (session 28, benchmarks/bench_aperture_rule.py): its scale at the reference rate
# and 20 ks, its change per decade of exposure and per decade of the aperture's rate, the
# reference rate (count/s; SR's 1e-4, where its scale is near the single one used before), and
# its clip at 20 ks
META := $(VPY) -c "import sys; from xmm_enhance.training.export import update_metadata as u; \
	u(sys.argv[1], dict(zip(['aperture_interval_scale', 'aperture_interval_slope', \
	'aperture_interval_rate_slope', 'aperture_interval_rate_ref', 'aperture_interval_min', \
	'aperture_interval_max'], sys.argv[2:])))"
models: $(VENV)/.train
	$(TRAIN) --ckpt-dir runs/checkpoints --task DN --total-steps 10000 --steps 7000 $(V1) --no-export
	$(TRAIN) --ckpt-dir runs/checkpoints --task SR --refine 0 --total-steps 24000 --steps 20740 \
	  $(SR_OLD) --no-export
	$(TRAIN) --ckpt-dir runs/checkpoints/SR_refine --task SR --refine 32 --steps 8103 \
	  --total-steps 11000 --lr 3e-4 --lr-min 2e-5 --init-from runs/checkpoints/SR_best.pt \
	  $(SR_OLD) --no-export
	$(TRAIN) --ckpt-dir runs/checkpoints/SR_elong --task SR --refine 32 --steps 7457 \
	  --total-steps 10000 --lr 3e-4 --lr-min 2e-5 --init-from runs/checkpoints/SR_refine/SR_best.pt \
	  $(SR_OLD) --no-export
	$(TRAIN) --ckpt-dir runs/checkpoints/SR_pos --task SR --refine 32 --position 1 --align 0 \
	  --steps 5233 --total-steps 10000 --lr 3e-4 --lr-min 2e-5 $(V1) \
	  --init-from runs/checkpoints/SR_elong/SR_best.pt --no-export
	$(TRAIN) --ckpt-dir runs/checkpoints/SR_align --task SR --refine 32 --position 1 --align 1 \
	  --steps 4406 --total-steps 6000 --lr 2.5e-4 --lr-min 2e-5 $(V1) \
	  --init-from runs/checkpoints/SR_pos/SR_last.pt --no-export
	$(TRAIN) --ckpt-dir runs/checkpoints/DN_v2 --task DN --steps $(V2_DN_STEPS) --total-steps 8000 \
	  --lr 3e-4 --lr-min 2e-5 --init-from runs/checkpoints/DN_best.pt --no-export
	$(TRAIN_ON) --ckpt-dir runs/checkpoints/DN_v2 --task DN --export-only --which best \
	  --interval-scale 0.92 --interval-slope 0.12
	$(META) models/XMM-DeNoise.onnx 0.90 -0.16 -0.17 0.001 0.53 0.90
	$(TRAIN) --ckpt-dir runs/checkpoints/SR_v2 --task SR --steps $(V2_SR_PLAIN_STEPS) \
	  --total-steps 8000 --lr 2.5e-4 --lr-min 2e-5 --init-from runs/checkpoints/SR_align/SR_best.pt \
	  --decompose-point-weight 0 --shape-expo-power 0 --no-export
	$(TRAIN_ON) --ckpt-dir runs/checkpoints/SR_v2 --task SR --steps $(V2_SR_POINT_STEPS) \
	  --total-steps 8000 --decompose-point-weight 2 --shape-expo-power 0 --no-export
	$(TRAIN_ON) --ckpt-dir runs/checkpoints/SR_v2 --task SR --steps $(V2_SR7_STEPS) \
	  --total-steps 7000 --decompose-point-weight 2 --shape-expo-power 0 --no-export
	$(TRAIN_ON) --ckpt-dir runs/checkpoints/SR_v2 --task SR --steps 7292 \
	  --total-steps 11500 --decompose-point-weight 2 --shape-expo-power 1 --no-export
	$(TRAIN_ON) --ckpt-dir runs/checkpoints/SR_v2 --task SR --steps $(V2_SR_STEPS) \
	  --total-steps 13000 --decompose-point-weight 2 --shape-expo-power 1 --no-export
	$(TRAIN_FLAT) --ckpt-dir runs/checkpoints/SR_v2 --task SR --steps 13000 --flat-bkg 0.1 \
	  --no-export
	$(TRAIN_FLAT) --ckpt-dir runs/checkpoints/SR_v2 --task SR --steps $(V2_SR_FLAT_STEPS) \
	  --flat-bkg 0.15 --flat-bkg-edge 0.5 --no-export
	$(TRAIN_HALO) --ckpt-dir runs/checkpoints/SR_halo --task SR --steps 2284 --total-steps 6000 \
	  --halo-share 0.3 --init-from runs/checkpoints/SR_v2/SR_last.pt --no-export
	$(TRAIN_HALO) --ckpt-dir runs/checkpoints/SR_halo --task SR --steps 11000 \
	  --total-steps 11000 --halo-share 0.5 --no-export
	$(TRAIN_FLAT) --ckpt-dir runs/checkpoints/SR_halo --task SR --export-only --which last \
	  --interval-scale 1.45 --interval-slope -0.40
	$(META) models/XMM-SuperRes.onnx 0.84 0.0 -0.24 0.0001 0.38 0.98
	$(VPY) -c "import sys; from xmm_enhance.training.export import update_metadata as u; \
	  u(sys.argv[1], {'version': '2.25400', 'training_history': sys.argv[2]})" \
	  models/XMM-SuperRes.onnx "$(SR_HISTORY)"

clean:
	rm -rf demo_output .pytest_cache
