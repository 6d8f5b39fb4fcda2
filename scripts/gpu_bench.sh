#!/usr/bin/env bash
# One call on a machine with a GPU: JAX against the note's PyTorch for every model, batch 128.
# Prints the table and the machine line, writes gpu_bench.jsonl (to $OUT when set, else here).
# PyTorch is timed on the GPU only with a CUDA build of torch; the CPU wheel of the parity extra
# would time PyTorch on the CPU, and the machine line says which it was.
set -euo pipefail
out="${OUT:-.}/gpu_bench.jsonl"
python -c "import jax; print('JAX devices:', jax.devices())"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
lightnets bench mobilenet_v1 mobilenet_v2 hybridsn hybridsn_bn --batch-size "${BATCH:-128}" \
  --steps "${STEPS:-10}" --compare-torch --json | tee "$out"
python - "$out" <<'PY'
import json, sys
from lightnets_jax import bench
records = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
for record in records:
    print(bench.format_row(record))
print(records[0]["machine"])
PY
