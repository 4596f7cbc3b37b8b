#!/bin/sh
# The GPU issue's device run, prepared to run once within one `run` call (at most 8 minutes,
# the issue's limit; 218 s on an H200 on 2026-12-04 with that day's smaller benchmark, before
# the profile step; about 300 s expected now): import checks, the `gpu` tests,
# then a small bench/gpu_bench.py (batches 1, 16, 64: the targets'; 16 MU=200 events;
# compiled bf16, compiled bf16 with CUDA graphs, the daemon served so, batches of up to 16
# and no queue delay, then eager fp32, bf16 parity and the kernels part as the budget
# allows), then bench/host_path.py (the daemon's host-side work per
# event, on this host's CPU, and ZeroMQ's transfer), then bench/chain_profile.py (where the
# chain's time goes, batches 16 and 1).
# Every step is bounded by `timeout` (465 s in all with the kill grace, and a few seconds
# for the wheels) and writes under $OUT (imports.txt, gpu-tests.txt, gpu-bench.log,
# gpu_bench.json, host-path.log, host_path.json, chain_profile.json, chain-profile.tar: the
# 8 files a run brings back); a failing step does not stop the next, and a call cut by its
# own limit brings back what is under $OUT.
# STEPS picks the steps after the import check (default "tests bench host profile"): a
# rerun in what is left of a session's 15 minutes runs the ones that failed, e.g.
# `STEPS=bench sh bench/device_run.sh` (at most 230 s).
#
# On the device (pyzmq and tomli-w are not installed there, see
# /work/.library/device/KINDS.md; bring their wheels, ignored by git):
#   here:  echo /.whl/ >> .git/info/exclude
#          python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#            --implementation cp --platform manylinux_2_28_x86_64 \
#            --platform manylinux_2_17_x86_64 -d .whl pyzmq==27.3.0 tomli-w==1.2.0
#   run:   sh bench/device_run.sh      (kind "nvidia-h200": the targets' and the reference
#          figures' card, where a run naming none may get an H100; carry [".whl"],
#          timeout_s 480)
#   then:  .venv/bin/python bench/gpu_report.py FILES_AT/gpu_bench.json \
#            --host-path FILES_AT/host_path.json   (writes
#          bench/results/h200-DATE.json, prints the summary for bench/RESULTS.md)
# Dry run on the CPU (what tests/bench/test_device_run.py does):
#   DEVICE=cpu OUT=/tmp/device-run sh bench/device_run.sh
set -u
OUT=${OUT:-/tmp/device-run}
DEVICE=${DEVICE:-cuda}
STEPS=${STEPS:-tests bench host profile}
PYTHON=${PYTHON:-python3}
for step in $STEPS; do  # a misspelt step would cost a rerun's device time for nothing
    case $step in
        tests | bench | host | profile) ;;
        *) echo "device_run: unknown step $step (steps: tests bench host profile)"; exit 2 ;;
    esac
done
# Whether step $1 is to run; says so where it is not.
step() {
    case " $STEPS " in *" $1 "*) return 0 ;; esac
    echo "device_run: $1 not in STEPS, skipped"
    return 1
}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PYTHONPATH=$PWD
if [ "$DEVICE" = cuda ] && ! ls .whl/*.whl >/dev/null 2>&1; then
    # The import check would fail on zmq after a machine's start: said at once instead.
    echo "device_run: no .whl/*.whl (pyzmq and tomli-w for Python 3.12, which the device" \
        "lacks): download them as this file's header says, and carry [\".whl\"]"
    exit 1
fi
if [ "$DEVICE" = cuda ]; then
    # A wheel is a zip: unpacked as it is where pip is missing. The wheels are the device's
    # (Python 3.12): a CPU dry run, in this checkout's environment, leaves them.
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl ||
        for w in .whl/*.whl; do "$PYTHON" -m zipfile -e "$w" /tmp/site; done
    PYTHONPATH=/tmp/site:$PWD
fi
export PYTHONPATH

# Every import the run needs, in the first seconds: a missing one ends the run here. The
# package's other third-party modules, which no step below imports, are listed, not needed.
timeout 30 "$PYTHON" - >"$OUT/imports.txt" 2>&1 <<'PY'
import importlib, sys
names = ["numpy", "torch", "msgpack", "zmq", "prometheus_client", "tqdm", "tomli_w",
         "pytest", "pytest_timeout", "streamtrk.recon.reconstructor", "streamtrk.service.serve"]
listed = ["scipy", "matplotlib", "yaml", "onnx", "onnxruntime", "onnxscript", "hypothesis"]
import os
if os.environ.get("DEVICE", "cuda") == "cuda":
    names.append("cupy")
for name in names:
    module = importlib.import_module(name)
    print(name, getattr(module, "__version__", ""))
import torch
print("cuda", torch.cuda.is_available(), torch.version.cuda)
if os.environ.get("DEVICE", "cuda") == "cuda":
    import cupy
    print("gpu", torch.cuda.get_device_name(0), "cupy devices", cupy.cuda.runtime.getDeviceCount())
for name in listed:  # last: a slow one does not hold up the check of those needed
    try:
        module = importlib.import_module(name)
    except Exception as exc:  # not needed by this run: said, not fatal
        print(name, "NOT IMPORTABLE (not needed here):", type(exc).__name__, exc)
    else:
        print(name, getattr(module, "__version__", ""))
PY
status=$?
cat "$OUT/imports.txt"
# A failed import ends the run; a slow one (cold caches on a fresh machine) does not: each
# step below has its own limit.
[ $status -eq 124 ] && echo "device_run: the import check ran past 30 s (see imports.txt); going on"
[ $status -eq 0 ] || [ $status -eq 124 ] ||
    { echo "device_run: an import failed (see imports.txt)"; exit 1; }

# One line per test as it ends (-v: a run cut by `timeout` still shows what passed), at
# most 100 s a test, the slowest listed. Warnings are listed, not errors (-W default: the
# project's `filterwarnings = error` would fail a test on any new CuPy or torch warning of
# this first run; list them, then silence them by message in the tests). First, alone, the
# one check of CUDA graphs called from another thread (the daemon's worker: torch issue
# 123177); then the files cheapest first, so that a run cut by `timeout` in the compiled
# pipeline still has them.
if step tests; then
    THREAD_TEST=test_cuda_graphs_score_from_another_thread
    # -rsP: the skips' reasons and what passing tests printed (parity, synchronisations).
    set -- -m gpu -v -rsP -W default --timeout 100 --durations 10 -p no:cacheprovider
    timeout 40 "$PYTHON" -m pytest "$@" -k "$THREAD_TEST" tests/recon/test_gpu_pipeline.py \
        >"$OUT/gpu-tests.txt" 2>&1
    echo "device_run: gpu thread test exit $?"
    timeout 105 "$PYTHON" -m pytest "$@" -k "not $THREAD_TEST" tests/recon/test_host_syncs.py \
        tests/recon/test_prune.py tests/recon/test_gpu_parity.py tests/recon/test_gpu_pipeline.py \
        >>"$OUT/gpu-tests.txt" 2>&1
    echo "device_run: gpu tests exit $?"
    tail -n 50 "$OUT/gpu-tests.txt"
fi

if step bench; then
    if [ "$DEVICE" = cuda ]; then
        set -- --events 16 --batches 1 16 64 --configs eager_fp32 compile_bf16 \
            compile_bf16_cudagraphs --daemon-config compile_bf16_cudagraphs --budget-s 160
    else
        set -- --device cpu --events 2 --mu 10 --batches 1 2 --configs eager_fp32 \
            --budget-s 120 --workers 1
    fi
    # SIGINT at the limit: its `finally` stops the daemon it started (no orphan on the GPU).
    timeout -s INT -k 10 185 "$PYTHON" bench/gpu_bench.py --out "$OUT" "$@" \
        >"$OUT/gpu-bench.log" 2>&1
    echo "device_run: gpu_bench exit $?"
    grep -v '^ ' "$OUT/gpu-bench.log" | tail -n 40
fi

if step host; then
    if [ "$DEVICE" = cuda ]; then
        set -- --events 4 --repeats 10 --messages 200 --device cuda
    else
        set -- --events 2 --mu 10 --repeats 3 --messages 20
    fi
    timeout 25 "$PYTHON" bench/host_path.py --json "$OUT/host_path.json" "$@" >/dev/null \
        2>"$OUT/host-path.log"
    echo "device_run: host_path exit $?"
fi

if step profile; then
    # Where the chain's time goes (bench/chain_profile.py: cProfile and torch.profiler
    # tables, its log, in one file: a run brings back at most 8; its JSON beside it). In the
    # headline configuration, compiled bf16 (2026-12-04's profile was eager fp32: its
    # network's small kernels hid the rest); the CuPy stages are the same in both. Batch 16
    # first (the device-bound profile); the JSON is written after each batch size, in $OUT
    # itself: a step or call cut keeps the sizes done.
    if [ "$DEVICE" = cuda ]; then
        set -- --events 16 --batches 16 1 --engine compile --precision bf16
    else
        set -- --device cpu --events 1 --mu 10 --batches 1 --repeats 1 --kernel-repeats 1 \
            --workers 1
    fi
    PROFILE=$(mktemp -d)/chain-profile
    mkdir -p "$PROFILE"
    timeout 70 "$PYTHON" bench/chain_profile.py --out "$PROFILE" \
        --json "$OUT/chain_profile.json" "$@" >"$PROFILE/log.txt" 2>&1
    echo "device_run: chain_profile exit $?"
    tar -C "$(dirname "$PROFILE")" -cf "$OUT/chain-profile.tar" chain-profile
fi
