#!/usr/bin/env bash
# The GPU checks, for a session that is lent a CUDA machine (CI has none). Run from the repo root:
#
#     DPMAMMO_DATA=<data root> OUT=<folder for logs> bash benchmarks/gpu_check.sh
#
# 1. the DP tests of tests/test_fast_dp.py on the GPU (every clipping mode against a per-example
#    loop, patient sensitivity, noise drawn ahead on the GPU from the secret generator);
# 2. `dpmammo train`: swin_t (random init) trained whole with DP-SGD per patient, then evaluated;
# 3. benchmarks/dp_speed.py on cuda: head-only modes and full-network DP vs non-private;
# 4. the paper preset, shortened (one seed, ε ∈ {1, inf}, 3 epochs, random init): the whole study
#    path on a GPU (feature cache, full-model synthetic pretrain, DP head runs, report);
# 5. benchmarks/paper_grid.py on cuda: the head-only runs of one seed at the paper's 300 epochs.
# Each part has its own time limit, so that a hang costs one part, not the lease.
# On the lent machine (python 3.12, torch 2.11 in its image), what its image lacks travels beside
# the tree, both folders listed in .git/info/exclude and carried:
#   .whl/     cp312 manylinux wheels, --no-deps: opacus, pydantic, pydantic-core, annotated-types,
#             typing-inspection, typing-extensions, pydicom, dp-accounting, dm-tree
#   .devdata/ a data root: cbis-ddsm/ and bcdr/ whole, synthetic/c-dcgan/ cut to 600 patches
#             (the whole set exceeds the 64 MiB a call carries); DPMAMMO_DATA=$PWD/.devdata/mammo_dp
set -uo pipefail
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || exit 1
  export PYTHONPATH=/tmp/site:$PWD
fi
export PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore
DP="python3 -m dpmammo.cli"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, opacus, timm; print('torch', torch.__version__, 'opacus', opacus.__version__, 'timm', timm.__version__, torch.cuda.get_device_name())"
t0=$(date +%s)
lap() { echo "=== $1: $(( $(date +%s) - t0 )) s since start"; }

lap "1 tests"
DPMAMMO_TEST_DEVICE=cuda timeout 100 python3 -m pytest -q -p no:cacheprovider tests/test_fast_dp.py \
  -k "per_example or moves_the_clipped or noise_drawn or swin or gan_discriminator" 2>&1 | tee "$OUT/1-tests.log" | tail -15

lap "2 train swin_t DP per patient"
RUN=/tmp/gpu-swin-dp
timeout 120 $DP train configs/swin-t-dp.yaml --out $RUN --set model.pretrained=false --set train.epochs=3 2>&1 | tee "$OUT/2-train.log" | tail -8
timeout 40 $DP evaluate $RUN --on cbis-ddsm/test --on bcdr/test 2>&1 | tail -6
cp $RUN/privacy.json "$OUT/2-privacy.json" 2>/dev/null

lap "3 dp_speed"
timeout 130 python3 benchmarks/dp_speed.py --device cuda --steps 5 --skip-head \
  --full-modes hooks,ghost,bookkeeping 2>&1 | tee "$OUT/3-dp_speed.log" | tail -30

lap "4 paper preset, shortened"
timeout 110 $DP study --preset paper --set model.pretrained=false --set 'seeds=[42]' --set 'epsilons=[1,inf]' \
  --set train.epochs=3 --out /tmp/paper-smoke 2>&1 | tee "$OUT/4-paper.log" | tail -25

lap "5 paper_grid, one seed, 300 epochs"
timeout 75 python3 benchmarks/paper_grid.py --device cuda --seed 42 --compare-epochs 5 2>&1 \
  | tee "$OUT/5-paper_grid.log" | tail -30
lap "end"
