#!/usr/bin/env bash
# Every benchmark in sequence with modest settings (2-core CPU: ~15 minutes); writes
# benchmarks/results/*.json, *.png and the printed output as *.log.
#   bash benchmarks/run_all.sh            (PYTHON=/path/to/python to pick the interpreter)
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python}
OUT=results
REAL=../tests/data/real
mkdir -p "$OUT"
WORK=$(mktemp -d -t crystal-rt-run-all-XXXXXX)
trap 'rm -rf "$WORK"' EXIT

run() {  # run NAME ARGS...: print, tee the output to results/NAME.log
  local name=$1
  shift
  echo "== $name: $*" | tee "$OUT/$name.log"
  "$@" 2>&1 | tee -a "$OUT/$name.log"
}

# 1. crystal-rt bench on the shipped demo engine (ONNX Runtime FP32), real images
"$PY" -c "import sys; from crystal_rt.assets import demo_model; from crystal_rt.build.engine import build_engine; build_engine(demo_model(), sys.argv[1])" "$WORK/demo"
run bench_demo "$PY" -u -m crystal_rt.cli.main bench "$WORK/demo" --images "$REAL" --runs 5 --warmup 1 \
  --cold-starts 3 --threads-sweep 1,2 --json "$OUT/bench_demo.json" --plot "$OUT/bench_demo.png"
# 2. torchvision eager vs crystal-rt ORT FP32 vs INT8 (resnet50, random weights)
run cpu_backends "$PY" -u cpu_backends.py --runs 3 --calib-images 8 --json "$OUT/cpu_backends.json" \
  --plot "$OUT/cpu_backends.png"
# 3. CLAHE: cv2 vs kornia vs crystal-rt GPU kernels
run clahe_compare "$PY" -u clahe_compare.py --runs 10 --json "$OUT/clahe_compare.json" --plot "$OUT/clahe_compare.png"
# 4. latency vs image size and number of detections (demo engine)
run scaling "$PY" -u scaling.py --runs 3 --json "$OUT/scaling.json" --plot "$OUT/scaling.png"
# 5. CHiMP-style pipeline vs crystal-rt
run chimp_pipeline "$PY" -u chimp_pipeline.py --runs 2 --warmup 1 --json "$OUT/chimp_pipeline.json" --plot "$OUT/chimp_pipeline.png"
# 6. GPU backends (skips without an NVIDIA GPU, and says so in its JSON)
run gpu_backends "$PY" -u gpu_backends.py --runs 5 --json "$OUT/gpu_backends.json" --plot "$OUT/gpu_backends.png"
ls -l "$OUT"
