#!/usr/bin/env bash
# The GPU check, one command for a machine with an NVIDIA GPU and CuPy, PyTorch and Numba installed (no network
# needed); it finishes in about seven minutes:
#
#     bash benchmarks/gpu_check.sh              # from anywhere; results in $OUT, else ./gpu-check-out
#     bash benchmarks/gpu_check.sh --standin    # no GPU: the same steps on the CPU stand-in for CuPy (a dry run)
#     bash benchmarks/gpu_check.sh --only tests,throughput    # some steps (and env), the others not run
#
# Steps, each with a time bound, its output in $OUT/<step>.log:
#   env         the GPU (nvidia-smi -L) and the versions of Python, NumPy, CuPy, PyTorch, Numba, tinygen
#   tests       the test suite's device tests ("device or cuda") on real CuPy: the `device` fixture and the
#               whole-model tests (tests/test_models_on_device.py) use the GPU when CuPy finds one
#   gan-mnist   `tinygen train gan --device cuda` (PyTorch-GAN preset, a few hundred steps), then `tinygen sample`
#   dcgan       `tinygen train gan --device cuda` (the default: the conditional DCGAN), then `tinygen eval`
#   gan-ring    `tinygen train gan --data ring --loss wgan-gp --device cuda` (double backward on the GPU), `eval`
#   vae         `tinygen train vae --device cuda --epochs 1`, then `tinygen eval` (ELBO and IWAE bound)
#   throughput  benchmarks/gpu_throughput.py: the models of `python -m benchmarks` (MLP with SGD and with Adam,
#               VAE, PyTorch-GAN's GAN, DCGAN) at batch 64/256/1024: tinygen on CuPy, eager and through
#               tinygen.compile without and with CUDA graphs, against PyTorch eager on CUDA, after a check that
#               all compute the same losses
#   compiled    a compiled elementwise chain unfused and fused into one CuPy kernel (benchmarks/compile_bench.py),
#               the GAN with its networks compiled apart (the backward after each call) against eager and the
#               whole step compiled, then tinygen.compile's steps against torch.compile(mode="reduce-overhead")
#               at batch 256 ($OUT/compiled)
# MNIST: $TINYGEN_DATA, else ../shared/data/mnist beside the checkout; without the training set the GAN uses the
# bundled test split and the VAE a folder that serves the bundled test split as its training set (smoke runs).
# Prints a summary; exits 1 if any step failed or timed out, 2 if there is no GPU (without --standin).
set -u

ALL_STEPS="env tests gan-mnist dcgan gan-ring vae throughput compiled"
STANDIN=0
ONLY=""
while [ $# -gt 0 ]; do
    case "$1" in
        --standin) STANDIN=1 ;;
        --only)
            [ $# -ge 2 ] || { echo "gpu_check.sh: --only needs a list of steps (of: $ALL_STEPS)" >&2; exit 2; }
            ONLY=" $(echo "$2" | tr ',' ' ') "
            for name in $ONLY; do
                case " $ALL_STEPS " in
                    *" $name "*) ;;
                    *) echo "gpu_check.sh: unknown step '$name' in --only (expected some of: $ALL_STEPS)" >&2
                       exit 2 ;;
                esac
            done
            shift ;;
        -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
        *) echo "gpu_check.sh: unknown argument '$1' (expected --standin, --only or --help)" >&2; exit 2 ;;
    esac
    shift
done

OUT="${OUT:-./gpu-check-out}"
mkdir -p "$OUT" || { echo "gpu_check.sh: cannot create the output folder '$OUT'" >&2; exit 2; }
OUT="$(cd "$OUT" && pwd)"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT" || exit 2
PY="${PYTHON:-python}"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export CI=1                         # hypothesis: the bounded "ci" profile
export MPLBACKEND=Agg
export TINYGEN_CACHE="$OUT/cache"   # no cached classifier from elsewhere: the runs depend on nothing outside
export PYTHONWARNINGS="${PYTHONWARNINGS:-default}"
if [ "$STANDIN" = 1 ]; then
    export TINYGEN_CUDA_STANDIN=1
fi

DEADLINE="${GPU_CHECK_SECONDS:-420}"  # for all steps; leaves room for the kill grace and the summary
START=$SECONDS
STEP_END=0
STEPS=()
RESULTS=()
FAILED=0
GAN_STEPS=300; RING_STEPS=60
if [ "$STANDIN" = 1 ]; then
    GAN_STEPS=20; RING_STEPS=6    # the CPU is no GPU: a dry run checks the flow, not the speed
fi

# step NAME RESERVE COMMAND...: run COMMAND (a function or a program) with the time left less RESERVE (seconds kept
# for the later steps) as its deadline, its output shown and written to $OUT/NAME.log.
step() {
    local name=$1 reserve=$2
    shift 2
    if [ -n "$ONLY" ]; then  # env always runs: it finds the GPU
        case "$ONLY" in
            *" $name "*) reserve=0 ;;  # the steps asked for share the deadline in their order
            *) [ "$name" = env ] || return 0 ;;
        esac
    fi
    local limit=$(( DEADLINE - (SECONDS - START) - reserve ))
    STEPS+=("$name")
    if (( limit < 5 )); then
        echo "=== $name: SKIPPED, no time left"
        RESULTS+=("SKIPPED (no time left)")
        FAILED=1
        return 1
    fi
    echo
    echo "=== $name (at most ${limit}s)"
    local t0=$SECONDS
    STEP_END=$(( SECONDS + limit ))
    "$@" 2>&1 | tee "$OUT/$name.log"
    local rc=${PIPESTATUS[0]}
    local took=$(( SECONDS - t0 ))
    if (( rc == 0 )); then
        RESULTS+=("ok (${took}s)")
    elif (( rc == 124 || rc == 137 )); then
        RESULTS+=("TIMED OUT after ${took}s (limit ${limit}s)")
        FAILED=1
    else
        RESULTS+=("FAILED, exit code $rc (${took}s)")
        FAILED=1
    fi
    return $rc
}

# bounded COMMAND...: run a program until the current step's deadline: SIGINT then (pytest prints what it has so
# far), SIGKILL 10 s later; exit code 124 when the time ran out.
bounded() {
    local left=$(( STEP_END - SECONDS ))
    if (( left < 1 )); then
        echo "no time left for: $*"
        return 124
    fi
    echo "\$ $(printf '%q ' "$@")"
    timeout -s INT -k 10 "$left" "$@"
}

# ---- the GPU and the versions ----------------------------------------------------------------------------------------
env_report() {
    if [ "$STANDIN" = 1 ]; then
        echo "GPU: none asked for (--standin: device 'cuda' is the CPU stand-in for CuPy)"
    elif command -v nvidia-smi > /dev/null; then
        bounded nvidia-smi -L || return 1
        bounded nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv || true
    else
        echo "nvidia-smi not found"
    fi
    bounded "$PY" - <<'EOF'
import importlib, platform, sys
print(f"python {platform.python_version()} ({sys.executable})")
for name in ("numpy", "cupy", "torch", "numba", "tinygen"):
    try:
        m = importlib.import_module(name)
        print(f"{name} {getattr(m, '__version__', '?')}")
    except Exception as e:
        print(f"{name}: not importable ({type(e).__name__}: {e})")
from tinygen import backend
try:
    xp = backend.array_module("cuda")
except RuntimeError as e:
    sys.exit(f"tinygen device 'cuda': {e}")
if xp is backend.standin:
    print("tinygen device 'cuda': the CPU stand-in for CuPy")
else:
    import cupy
    props = cupy.cuda.runtime.getDeviceProperties(0)
    name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
    print(f"tinygen device 'cuda': CuPy on {name}, {props['totalGlobalMem'] / 2**30:.0f} GiB, CUDA runtime "
          f"{cupy.cuda.runtime.runtimeGetVersion()}, driver {cupy.cuda.runtime.driverGetVersion()}")
try:
    import torch
    print(f"torch.cuda.is_available(): {torch.cuda.is_available()}"
          + (f" ({torch.cuda.get_device_name(0)}, CUDA {torch.version.cuda})" if torch.cuda.is_available() else ""))
except ImportError:
    pass
EOF
}

echo "tinygen GPU check: $(date -u '+%Y-%m-%d %H:%M:%S UTC'), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?'), output in $OUT"
if ! step env 390 env_report; then
    if [ "$STANDIN" = 0 ]; then
        echo
        echo "gpu_check.sh: no usable GPU for tinygen (see above); run with --standin for a dry run without one" >&2
        exit 2
    fi
fi

# ---- data ------------------------------------------------------------------------------------------------------------
DATA=""
for d in "${TINYGEN_DATA:-}" "$ROOT/../shared/data/mnist"; do
    if [ -n "$d" ] && { [ -e "$d/train-images-idx3-ubyte.gz" ] || [ -e "$d/train-images-idx3-ubyte" ]; }; then
        DATA="$(cd "$d" && pwd)"
        break
    fi
done
if [ -n "$DATA" ]; then
    GAN_DATA=(--data "$DATA")
    VAE_DATA="$DATA"
    echo "MNIST: the full training set in $DATA"
else
    # The bundled test split, linked under the training set's names: the VAE trains and tests on it (a smoke run).
    VAE_DATA="$OUT/mnist-bundled-test-as-train"
    mkdir -p "$VAE_DATA"
    BUNDLED="$ROOT/tinygen/data/files"
    for kind in images-idx3 labels-idx1; do
        ln -sf "$BUNDLED/t10k-$kind-ubyte.gz" "$VAE_DATA/train-$kind-ubyte.gz"
        ln -sf "$BUNDLED/t10k-$kind-ubyte.gz" "$VAE_DATA/t10k-$kind-ubyte.gz"
    done
    GAN_DATA=()
    echo "MNIST: no training set found (\$TINYGEN_DATA, ../shared/data/mnist); the GAN and VAE train on the bundled" \
         "10,000-image test split (smoke runs, not results)"
fi

# ---- the test suite's device tests -----------------------------------------------------------------------------------
step tests 285 bounded "$PY" -m pytest -q -k "device or cuda" -p no:cacheprovider --maxfail=25 \
    --junitxml="$OUT/tests.xml" tests

# ---- short trainings through the command line ------------------------------------------------------------------------
rm -rf "$OUT/gan-mnist" "$OUT/dcgan" "$OUT/gan-ring" "$OUT/vae"
gan_mnist() {
    bounded "$PY" -m tinygen train gan --device cuda --preset pytorch-gan --steps "$GAN_STEPS" --n-train 6400 \
        --eval-samples 500 --log-every 50 --out "$OUT/gan-mnist" --quiet "${GAN_DATA[@]}" &&
    bounded "$PY" -m tinygen sample "$OUT/gan-mnist/checkpoint.npz" --n 64 --device cuda \
        --out "$OUT/gan-mnist/cli_samples.png"
}
step gan-mnist 265 gan_mnist

dcgan() {  # the README's main job (the conditional DCGAN, convolutions through cuDNN or im2col + cuBLAS), shortened
    bounded "$PY" -m tinygen train gan --device cuda --steps "$GAN_STEPS" --n-train 6400 --eval-samples 500 \
        --log-every 50 --out "$OUT/dcgan" --quiet "${GAN_DATA[@]}" &&
    bounded "$PY" -m tinygen eval "$OUT/dcgan/checkpoint.npz" --json --n 1000 --device cuda
}
step dcgan 240 dcgan

gan_ring() {
    bounded "$PY" -m tinygen train gan --device cuda --data ring --loss wgan-gp --steps "$RING_STEPS" \
        --eval-samples 1000 --out "$OUT/gan-ring" --quiet &&
    bounded "$PY" -m tinygen eval "$OUT/gan-ring/checkpoint.npz" --json --n 2000 --device cuda
}
step gan-ring 225 gan_ring

vae() {
    bounded "$PY" -m tinygen train vae --device cuda --epochs 1 --batch-size 128 --data "$VAE_DATA" \
        --out "$OUT/vae" --quiet &&
    bounded "$PY" -m tinygen eval "$OUT/vae/checkpoint.npz" --json --iwae-k 100 --iwae-images 100 --device cuda \
        --data "$VAE_DATA" &&
    bounded "$PY" -m tinygen sample "$OUT/vae/checkpoint.npz" --n 64 --device cuda --out "$OUT/vae/cli_samples.png"
}
step vae 200 vae

# ---- throughput: tinygen on CuPy against PyTorch on CUDA -------------------------------------------------------------
# every model of `python -m benchmarks`, tinygen eager and compiled against PyTorch eager; then the compiled steps
# against torch.compile(mode="reduce-overhead") at one batch size (its compilations take tens of seconds each)
THROUGHPUT_ARGS=(--seconds 0.3 --repeats 3 --warmup 5 --require-gpu)
COMPILE_ARGS=(--batch-sizes 256 --seconds 0.3 --repeats 3 --warmup 5 --require-gpu)
if [ "$STANDIN" = 1 ]; then
    THROUGHPUT_ARGS=(--dry-run --batch-sizes 4)
    COMPILE_ARGS=(--dry-run --batch-sizes 4 --models mlp)
fi
step throughput 75 bounded "$PY" benchmarks/gpu_throughput.py --out "$OUT" \
    --frameworks tinygen,tinygen-replay,tinygen-compiled,torch "${THROUGHPUT_ARGS[@]}"
compiled_steps() {
    # first a compiled four-op chain unfused and fused into one CuPy kernel (seconds), the GAN's networks compiled
    # apart (seconds), then torch.compile's models
    bounded "$PY" -m benchmarks.compile_bench --fusion-only --device cuda &&
    bounded "$PY" -m benchmarks.compile_bench --forward-only --device cuda &&
    bounded "$PY" benchmarks/gpu_throughput.py --out "$OUT/compiled" --no-check \
        --frameworks tinygen-compiled,torch-compile "${COMPILE_ARGS[@]}"
}
step compiled 0 compiled_steps

# ---- summary ---------------------------------------------------------------------------------------------------------
{
    echo
    echo "==================== tinygen GPU check: summary ($(( SECONDS - START ))s) ===================="
    [ "$STANDIN" = 1 ] && echo "(--standin: no GPU; device 'cuda' was the CPU stand-in for CuPy)"
    grep -m1 -E "^GPU [0-9]+:" "$OUT/env.log" 2> /dev/null
    grep -E "^(cupy|torch|tinygen) " "$OUT/env.log" 2> /dev/null | tr '\n' ' '
    echo
    for i in "${!STEPS[@]}"; do
        printf '  %-11s %s\n' "${STEPS[$i]}" "${RESULTS[$i]}"
    done
    echo
    [ -f "$OUT/tests.log" ] && echo "tests: $(grep -E '(passed|failed|error)' "$OUT/tests.log" | tail -1)"
    [ -f "$OUT/gan-mnist/metrics.jsonl" ] && echo "gan-mnist, last epoch: $(tail -1 "$OUT/gan-mnist/metrics.jsonl")"
    [ -f "$OUT/dcgan.log" ] && echo "dcgan eval: $(grep -E '^\{' "$OUT/dcgan.log" | tail -1)"
    [ -f "$OUT/gan-ring.log" ] && echo "gan-ring eval: $(grep -E '^\{' "$OUT/gan-ring.log" | tail -1)"
    [ -f "$OUT/vae/metrics.jsonl" ] && echo "vae, epoch 1: $(tail -1 "$OUT/vae/metrics.jsonl")"
    [ -f "$OUT/compiled.log" ] && grep -A4 -E "^\(a \* b \+ c\)" "$OUT/compiled.log"
    for table in "$OUT/gpu_throughput.md" "$OUT/compiled/gpu_throughput.md"; do
        if [ -f "$table" ]; then
            echo
            cat "$table"
        fi
    done
    echo
    if [ "$FAILED" = 0 ]; then
        echo "RESULT: all steps passed; outputs in $OUT"
    else
        echo "RESULT: FAILED (see the steps above and their logs in $OUT)"
    fi
} | tee "$OUT/summary.txt"
exit "$FAILED"
