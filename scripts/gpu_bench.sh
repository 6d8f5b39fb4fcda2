#!/usr/bin/env bash
# One call on a machine with a GPU: JAX against the note's PyTorch for every model, batch 128.
# Prints the table and the machine line, writes gpu_bench.jsonl (to $OUT when set, else here).
# PyTorch is timed on the GPU only with a CUDA build of torch; the CPU wheel of the parity extra
# would time PyTorch on the CPU, and the machine line says which it was. A second pass times
# JAX's `reference` convs (XLA's own, cuDNN on a GPU) against the `fast` CPU formulations, to
# decide per backend which the models should use (gpu_bench_reference.jsonl).
set -euo pipefail
out="${OUT:-.}/gpu_bench.jsonl"
out_reference="${OUT:-.}/gpu_bench_reference.jsonl"
python -c "import jax; print('JAX devices:', jax.devices())"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
lightnets bench mobilenet_v1 mobilenet_v2 hybridsn hybridsn_bn --batch-size "${BATCH:-128}" \
  --steps "${STEPS:-10}" --compare-torch --json | tee "$out"
lightnets bench mobilenet_v1 mobilenet_v2 hybridsn hybridsn_bn --batch-size "${BATCH:-128}" \
  --steps "${STEPS:-10}" --conv-impl reference --json | tee "$out_reference"
python - "$out" "$out_reference" <<'PY'
import json, sys
from lightnets_jax import bench
for path, title in zip(sys.argv[1:], ("conv_impl=fast (default)", "conv_impl=reference (XLA convs)")):
    records = [json.loads(line) for line in open(path) if line.strip()]
    print(title)
    for record in records:
        print(bench.format_row(record))
print(records[0]["machine"])
PY
