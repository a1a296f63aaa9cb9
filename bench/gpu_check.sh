#!/usr/bin/env bash
# GPU check (issue 12) for a Linux machine with an NVIDIA GPU (written for an H200), CUDA's nvcc,
# CMake and ninja, but no network. Two steps:
#
#   bench/gpu_check.sh prepare   here, where pip and the llama-cpp-python sdist are: writes .gpu/
#                                (ignored by git, < 64 MiB): a trimmed llama.cpp source (the one the
#                                pinned llama-cpp-python vendors), the bindings' Python files, the
#                                wheels corral needs that the GPU machine's Python 3.12 lacks, SmolLM2's
#                                tokenizer and loadgen.py
#   bench/gpu_check.sh run       there (repository root, .gpu/ carried), within ~10 minutes: builds the
#                                CUDA variant with llama-server (scripts/build_backend.sh cuda), writes
#                                a ~1.1B random llama GGUF (bench/random_gguf.py), runs the GPU
#                                integration tests (tests/integration/test_gpu_offload.py) and
#                                benchmarks corral against llama-server (same llama.cpp, CUDA, all
#                                layers offloaded) at concurrency 1, 8 and 32
#
# Results: $OUT (the device tool's folder) or bench/out/gpu: gpu_check.log, pytest.log, the loadgen
# JSONs, compare.txt and runner_steps.json (corral's per-step Python overhead by batch width).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
CARRY="$ROOT/.gpu"
VERSION=0.3.36
PARALLEL=${GPU_CHECK_PARALLEL:-32}
CTX=${GPU_CHECK_CTX:-2048}

prepare() {
  local py="$ROOT/.venv/bin/python" src sdist
  mkdir -p "$CARRY/whl"
  grep -qx '/.gpu/' "$ROOT/.git/info/exclude" 2>/dev/null || echo '/.gpu/' >> "$ROOT/.git/info/exclude"
  sdist=${LLAMA_CPP_SDIST:-$HOME/.cache/corral-bench/llama_cpp_python-$VERSION.tar.gz}
  [ -f "$sdist" ] || { "$py" -m pip download --no-deps --no-binary :all: -d "$CARRY" "llama-cpp-python==$VERSION";
                       sdist="$CARRY/llama_cpp_python-$VERSION.tar.gz"; }
  src=$(mktemp -d)
  tar xzf "$sdist" -C "$src"
  # llama.cpp without what a CUDA build of the libraries, llama-server and rpc-server never reads
  tar cJf "$CARRY/llama.cpp.tar.xz" -C "$src/llama_cpp_python-$VERSION/vendor" \
    --exclude=llama.cpp/docs --exclude=llama.cpp/models --exclude=llama.cpp/media \
    --exclude=llama.cpp/gguf-py --exclude=llama.cpp/conversion --exclude=llama.cpp/benches \
    --exclude=llama.cpp/tools/ui/src --exclude=llama.cpp/tools/ui/tests --exclude=llama.cpp/.github \
    --exclude='llama.cpp/ggml/src/ggml-'{vulkan,sycl,metal,opencl,cann,hexagon,openvino,webgpu,et,virtgpu,zdnn,musa,zendnn} \
    llama.cpp
  tar czf "$CARRY/llama_cpp_py.tar.gz" -C "$src/llama_cpp_python-$VERSION" --exclude=llama_cpp/lib llama_cpp
  rm -rf "$src"
  "$py" "$ROOT/bench/random_gguf.py" --tokenizer "$("$py" -c 'from tests.support import smollm2_path; print(smollm2_path())')" \
    --export-tokenizer "$CARRY/tokenizer.json.xz"
  cp "$ROOT/../shared/bench/loadgen.py" "$CARRY/loadgen.py"
  # corral's dependencies that the GPU machine's image (Python 3.12) lacks, at the versions pinned here
  "$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$CARRY/whl" fastapi==0.165.0 starlette==1.10.0 uvicorn==0.54.0 pydantic==2.14.3 \
    pydantic_core==2.50.4 typing-inspection==0.4.5 annotated-types typing_extensions==4.16.0 gguf==0.19.0 \
    prompt_toolkit==3.0.53 wcwidth==0.9.4 cryptography==50.0.2 cffi==2.1.1 pycparser==3.12 PyJWT==2.15.1 \
    websockets==17.4 diskcache==5.6.3 anyio==4.16.0 h11==0.16.0 httpx==0.28.1 httpcore
  du -sh "$CARRY"
}

log() { echo "[$(( $(date +%s) - T0 ))s] $*" | tee -a "$RESULTS/gpu_check.log"; }

setup_python() {
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    "$CARRY"/whl/*.whl
  tar xzf "$CARRY/llama_cpp_py.tar.gz" -C /tmp/site
  export PYTHONPATH=/tmp/site:$ROOT PYTHONUNBUFFERED=1
}

build() {
  VARIANT=/tmp/backends/cuda-$VERSION
  export CORRAL_BACKENDS_DIR=/tmp/backends LLAMA_CPP_LIB_PATH=$VARIANT/lib MTMD_CPP_LIB=$VARIANT/lib
  if [ -f "$VARIANT/variant.json" ] && [ -x "$VARIANT/bin/llama-server" ]; then return 0; fi  # a warm machine
  rm -rf /tmp/src
  mkdir -p /tmp/src
  tar xJf "$CARRY/llama.cpp.tar.xz" -C /tmp/src
  LLAMA_CPP_SRC=/tmp/src/llama.cpp LLAMA_CPP_PYTHON_VERSION=$VERSION BUILD_LLAMA_SERVER=1 PYTHON=python3 \
    BUILD_JOBS=$(nproc) EXTRA_CMAKE_ARGS="-DCMAKE_CUDA_ARCHITECTURES=${CUDA_ARCH:-90} -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF" \
    "$ROOT/scripts/build_backend.sh" cuda > "$RESULTS/build.log" 2>&1 || { tail -40 "$RESULTS/build.log"; exit 1; }
}

wait_http() {  # url seconds
  python3 - "$1" "$2" <<'EOF'
import sys, time, httpx
end = time.monotonic() + float(sys.argv[2])
while time.monotonic() < end:
    try:
        if httpx.get(sys.argv[1], timeout=2, trust_env=False).status_code == 200:
            sys.exit(0)
    except httpx.HTTPError:
        pass
    time.sleep(0.5)
sys.exit(f"not ready: {sys.argv[1]}")
EOF
}

bench_one() {  # label url model
  python3 "$CARRY/loadgen.py" --url "$2" --api openai --model "$3" --scenario decode --concurrency 1,8,32 \
    --max-tokens 128 --label "$1" --json "$RESULTS/$1-decode.json" --quiet --max-seconds 150 --timeout 60 \
    || log "loadgen $1 failed"
}

benchmark() {
  local model=/tmp/rand-1b.gguf port=18080 home=/tmp/corral-bench-home pid
  "$VARIANT/bin/llama-server" -m "$model" --host 127.0.0.1 --port $port -ngl 999 -np "$PARALLEL" \
    -c $(( PARALLEL * CTX )) --no-webui > "$RESULTS/llama-server.log" 2>&1 &
  pid=$!
  wait_http "http://127.0.0.1:$port/health" 120
  bench_one llama-server "http://127.0.0.1:$port" rand1b
  kill "$pid"; wait "$pid" 2>/dev/null || true
  log "llama-server done"
  mkdir -p "$home"
  CORRAL_HOME=$home CORRAL_HOST=127.0.0.1:$(( port + 1 )) CORRAL_BACKEND=cuda CORRAL_NUM_PARALLEL=$PARALLEL \
    CORRAL_CONTEXT_LENGTH=$CTX CORRAL_KEEP_ALIVE=-1 python3 -m corral serve > "$RESULTS/corral.log" 2>&1 &
  pid=$!
  wait_http "http://127.0.0.1:$(( port + 1 ))/" 120
  printf 'FROM %s\n' "$model" > "$home/Modelfile"
  CORRAL_HOST=127.0.0.1:$(( port + 1 )) python3 -m corral create rand1b -f "$home/Modelfile" > /dev/null
  python3 -c "import httpx, sys; httpx.post(sys.argv[1], json={'model': 'rand1b'}, timeout=300, trust_env=False)" \
    "http://127.0.0.1:$(( port + 1 ))/api/generate"
  CORRAL_HOST=127.0.0.1:$(( port + 1 )) python3 -m corral ps | tee -a "$RESULTS/gpu_check.log"
  bench_one corral "http://127.0.0.1:$(( port + 1 ))" rand1b
  python3 - "$RESULTS/runner_steps.json" <<'EOF' || true
import glob, json, socket, sys
for path in glob.glob("/tmp/corral-r-*/s"):
    s = socket.socket(socket.AF_UNIX); s.connect(path); s.sendall(b'{"op": "status"}\n')
    data = b""
    while not data.endswith(b"\n"):
        chunk = s.recv(1 << 20)
        if not chunk:
            break
        data += chunk
    open(sys.argv[1], "w").write(data.decode())
EOF
  kill "$pid"; wait "$pid" 2>/dev/null || true
  python3 "$CARRY/loadgen.py" --compare "$RESULTS/llama-server-decode.json" "$RESULTS/corral-decode.json" \
    | tee "$RESULTS/compare.txt"
}

start() {
  T0=$(date +%s)
  RESULTS=${OUT:-$ROOT/bench/out/gpu}
  mkdir -p "$RESULTS"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee -a "$RESULTS/gpu_check.log"
  nvcc --version | tail -1 | tee -a "$RESULTS/gpu_check.log"
  export OMP_WAIT_POLICY=PASSIVE
  setup_python
  log "python ready"
  build
  log "cuda variant built: $(tr -d '\n' < "$VARIANT/variant.json")"
}

run() {
  start
  python3 "$ROOT/bench/random_gguf.py" --tokenizer "$CARRY/tokenizer.json.xz" --out /tmp/rand-1b.gguf
  python3 "$ROOT/bench/random_gguf.py" --tokenizer "$CARRY/tokenizer.json.xz" --out /tmp/smollm2-shape.gguf \
    --layers 30 --embd 576 --ff 1536 --heads 9 --kv-heads 3
  log "models written: $(du -h /tmp/rand-1b.gguf | cut -f1)"
  CORRAL_TEST_GPU_BACKEND=cuda CORRAL_TEST_GPU_GGUF=/tmp/smollm2-shape.gguf \
    CORRAL_TEST_GPU_TOKENIZER="$CARRY/tokenizer.json.xz" timeout 240 python3 -m pytest -q -p no:cacheprovider \
    -o addopts="" tests/integration/test_gpu_offload.py > "$RESULTS/pytest.log" 2>&1 || true
  log "gpu tests: $(tail -1 "$RESULTS/pytest.log")"
  benchmark
  log "done"
}

case "${1:-}" in
  prepare) prepare ;;
  build) start ;;  # the build alone (a first device call), kept on a warm machine for `run`
  run) run ;;
  *) echo "usage: bench/gpu_check.sh prepare|build|run" >&2; exit 2 ;;
esac
