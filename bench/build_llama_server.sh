#!/usr/bin/env bash
# Build llama.cpp's own llama-server from the llama.cpp that the pinned llama-cpp-python sdist
# vendors (same ggml kernels as corral's engine), into a cache directory outside the repository.
# Usage: bench/build_llama_server.sh [CACHE_DIR]   (prints the path of the llama-server binary)
set -euo pipefail
VERSION=0.3.36
CACHE=${1:-${CORRAL_BENCH_CACHE:-$HOME/.cache/corral-bench}}
BIN="$CACHE/llama.cpp-$VERSION/build/bin/llama-server"
if [ -x "$BIN" ]; then echo "$BIN"; exit 0; fi
mkdir -p "$CACHE"
cd "$CACHE"
if [ ! -f "llama_cpp_python-$VERSION.tar.gz" ]; then
  python3 -m pip download --no-deps --no-binary :all: -d . "llama-cpp-python==$VERSION" >&2
fi
rm -rf "llama.cpp-$VERSION" "llama_cpp_python-$VERSION"
tar xzf "llama_cpp_python-$VERSION.tar.gz" "llama_cpp_python-$VERSION/vendor/llama.cpp"
mv "llama_cpp_python-$VERSION/vendor/llama.cpp" "llama.cpp-$VERSION"
rm -rf "llama_cpp_python-$VERSION"
cd "llama.cpp-$VERSION"
cmake -B build -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF \
  -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON >&2
cmake --build build --target llama-server llama-bench -j "$(nproc)" >&2
echo "$BIN"
