#!/usr/bin/env bash
# One call on a machine with a GPU: JAX against the note's PyTorch for every model, batch 128.
# Four passes, most wanted first, each written as it finishes (so a cut-off run keeps the earlier):
#   1. float32, conv_impl=fast (the default)          -> gpu_bench_fast.jsonl
#   2. float32, conv_impl=reference (XLA's convs: cuDNN on a GPU) -> gpu_bench_reference.jsonl
#   3./4. the same two with bfloat16 compute (PyTorch under torch.autocast) -> gpu_bench_bf16_*.jsonl
# Passes 1 and 2 decide per backend which convolutions the models should use. PyTorch is timed on
# the GPU only with a CUDA build of torch (the CPU wheel of the parity extra would time it on the
# CPU); the machine line says which. Works from a checkout without an install: it falls back to
# `python3 -m lightnets_jax.cli` with the checkout on PYTHONPATH. Files go to $OUT when set, else here.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-.}"
if command -v lightnets >/dev/null; then
  lightnets=(lightnets)
else
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
  lightnets=(python3 -m lightnets_jax.cli)
fi
export PYTHONUNBUFFERED=1
python3 -c "import jax, flax, optax; print('JAX devices:', jax.devices(), '| jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__)"
python3 -c "import torch; print('torch', torch.__version__, 'cuda' if torch.cuda.is_available() else 'cpu only')" || true
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
models=(mobilenet_v1 mobilenet_v2 hybridsn hybridsn_bn)
passes=("fast:" "reference:" "reference:--bf16" "fast:--bf16")
files=()
for pass in "${passes[@]}"; do
  impl="${pass%%:*}"
  flags="${pass#*:}"
  file="$out/gpu_bench${flags:+_bf16}_$impl.jsonl"
  echo "== conv_impl=$impl ${flags:-float32}"
  # shellcheck disable=SC2086  # $flags is empty or one flag
  "${lightnets[@]}" bench "${models[@]}" --batch-size "${BATCH:-128}" --steps "${STEPS:-20}" \
    --conv-impl "$impl" $flags --compare-torch --json | tee "$file"
  files+=("$file")
done
python3 - "${files[@]}" <<'PY'
import json, sys
from lightnets_jax.cli import bench
for path in sys.argv[1:]:
    records = [json.loads(line) for line in open(path) if line.strip()]
    print(f"conv_impl={records[0]['conv_impl']}, {records[0]['compute_dtype']} ({path})")
    for record in records:
        print(bench.format_row(record))
print(records[0]["machine"])
PY
