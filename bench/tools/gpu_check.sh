#!/usr/bin/env bash
# The prepared GPU check: what the harness costs on a GPU, in one short run.
#
#   bash bench/tools/gpu_check.sh --fetch   # here, where PyPI is reachable: wheels of fastai and its pure-Python needs
#                                     # into .whl/, the CIFAR-10 archive into .gpu/ (both git-ignored, ~25 MB)
#   bash bench/tools/gpu_check.sh           # on the GPU machine: Python 3.12 with torch, no fastai, no network
#
# On the GPU machine it installs the wheels into /tmp/site (fastprogress 1.0.3: the 1.1 series imports the
# fasthtml web stack; spaCy is left out: only fastai.text needs it), then runs
#   1. bench/tools/speed.py at 224 px: Learner vs plain loop (same fused optimizer, both warmed up), pipeline vs model,
#      cache load time, peak memory after warm-up;
#   2. 2 epochs of W1 `full` (ResNet18, Resize 256 + CenterCrop 224, 40k train / 10k valid / 10k test, bf16,
#      channels_last) with --weights none: random init, for timing only (its accuracy means nothing); the
#      10-epoch estimate is 10 x the second epoch (training + validation), warm-up recorded apart;
#   3. 2 epochs each of W1 `partial` and `progressive` (a stage unfreezes after epoch 1), same data;
# and writes speed.json, w1-results.jsonl and gpu-summary.json into $OUT (or reports/gpu/). About 4 minutes.
# With this workplace's device tool: run(command="bash bench/tools/gpu_check.sh", carry=[".whl", ".gpu"], timeout_s=420).
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS=(fastai==2.8.12 fastcore==2.2.41 fastprogress==1.0.3 fastdownload==0.0.8 fasttransform==0.0.5
        plum-dispatch==2.9.0 beartype==0.23.1 timm==1.0.31)

if [ "${1:-}" = "--fetch" ]; then
    rm -rf .whl && mkdir -p .whl .gpu
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d .whl "${WHEELS[@]}"
    src="${FTBENCH_DATA:-../shared/data/cifar10.tgz}"
    [ -f "$src" ] || { echo "error: no CIFAR-10 archive at $src; set FTBENCH_DATA" >&2; exit 2; }
    cp "$src" .gpu/cifar10.tgz
    echo "ready: $(ls .whl | wc -l) wheels in .whl/, data in .gpu/; carry both to the GPU machine"
    exit 0
fi

[ -d .whl ] && [ -f .gpu/cifar10.tgz ] || { echo "error: run 'bash bench/tools/gpu_check.sh --fetch' first" >&2; exit 2; }
out="${OUT:-reports/gpu}"
mkdir -p "$out"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 FTBENCH_DATA=.gpu/cifar10.tgz FTBENCH_CACHE=/tmp/ftbench-cache
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"

python3 -m bench.tools.speed --size 224 --bs 256 --steps 20 --repeats 3 --json | tee "$out/speed.json"
W1=(--preset w1 --backbone resnet18 --weights none --epochs 2 --unfreeze-at 1 --profile full
    --results "$out/w1-results.jsonl" --no-bar --no-render)
python3 -m bench.finetune "${W1[@]}" --strategy full
python3 -m bench.finetune "${W1[@]}" --strategy partial,progressive || echo "partial/progressive failed; see above"

python3 - "$out" <<'PY'
import json, sys
out = sys.argv[1]
speed = json.load(open(f'{out}/speed.json'))
runs = {r['strategy']: r for r in map(json.loads, open(f'{out}/w1-results.jsonl'))}
summary = dict(speed=speed, weights='none (timing only)', versions=runs['full']['versions'], w1={})
for name, r in runs.items():
    summary['w1'][name] = {k: r[k] for k in ('device', 'train_seconds', 'warmup_seconds', 'eval_seconds',
                                             'images_per_second', 'peak_memory_mb', 'train_images', 'error')}
    summary['w1'][name]['epochs'] = [{k: e[k] for k in ('train_seconds', 'valid_seconds', 'trainable')}
                                     for e in r['epochs'] or []]
full = runs['full']['epochs'][-1]  # the second epoch: nothing left to warm up
summary['w1_full_10_epochs_estimate_s'] = 10 * (full['train_seconds'] + full['valid_seconds'])
json.dump(summary, open(f'{out}/gpu-summary.json', 'w'), indent=1, sort_keys=True)
print(json.dumps(summary, indent=1, sort_keys=True))
PY
