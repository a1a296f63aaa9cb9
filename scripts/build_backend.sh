#!/usr/bin/env bash
# Build an accelerated llama.cpp library set for corral's runners from the llama.cpp that the pinned
# llama-cpp-python vendors (same version as the Python bindings, so the ctypes layouts match).
# The pip-installed CPU wheel stays the default; a runner uses a variant through
# LLAMA_CPP_LIB_PATH=<dir>/lib and MTMD_CPP_LIB=<dir>/lib (set by corral, see corral/backends.py).
#
# Usage: scripts/build_backend.sh VARIANT        VARIANT = vulkan | cuda | cpu-rpc | auto
#   auto: cuda where nvcc and an NVIDIA GPU are, vulkan where glslc and the Vulkan headers are, else
#   nothing; a failed automatic build warns and leaves the CPU build
#   (CORRAL_BACKEND=cpu: nothing; CORRAL_BACKEND=<variant>: that one).
#   Prints the variant directory: ~/.cache/corral/backends/<variant>-<version>/{lib,bin}
# Environment:
#   CORRAL_BACKENDS_DIR  where variants go (default ~/.cache/corral/backends)
#   LLAMA_CPP_SRC        an extracted llama.cpp source tree to build (default: the sdist's vendor/llama.cpp)
#   LLAMA_CPP_SDIST      the llama-cpp-python sdist (default: ~/.cache/corral-bench/..., else pip download)
#   BUILD_JOBS           parallel compile jobs (default: nproc)
#   BUILD_LLAMA_SERVER=1 also build llama-server into bin/ (the GPU benchmark compares against it)
#   EXTRA_CMAKE_ARGS     more cmake arguments (e.g. -DCMAKE_CUDA_ARCHITECTURES=90 for one GPU generation)
# Every variant has -DGGML_RPC=ON and bin/rpc-server (a worker for remote offload).
set -euo pipefail
VARIANT=${1:?usage: build_backend.sh vulkan|cuda|cpu-rpc|auto}
if [ "$VARIANT" = auto ]; then  # what `make run`/`make test` build: the accelerator this machine can use
  case "${CORRAL_BACKEND:-auto}" in
    cpu) exit 0 ;;
    cuda|vulkan|cpu-rpc) VARIANT=$CORRAL_BACKEND ;;
    *) if command -v nvcc >/dev/null 2>&1 && { [ -e /dev/nvidiactl ] || ls /dev/nvidia[0-9]* >/dev/null 2>&1; }; then
         VARIANT=cuda  # a CUDA toolkit and an NVIDIA GPU
       elif command -v glslc >/dev/null 2>&1 && [ -f /usr/include/vulkan/vulkan.hpp ]; then VARIANT=vulkan
       else echo "no GPU toolchain (nvcc and a GPU, or glslc + Vulkan headers): the CPU build only" >&2; exit 0; fi ;;
  esac
  # a failed automatic build leaves the CPU build in place rather than failing `make run`/`make test`
  if ! "$0" "$VARIANT"; then
    echo "warning: building the $VARIANT variant failed; runners use the CPU build" >&2
  fi
  exit 0
fi
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-$ROOT/.venv/bin/python}
[ -x "$PY" ] || PY=python3
VERSION=${LLAMA_CPP_PYTHON_VERSION:-$("$PY" -c 'import importlib.metadata as m; print(m.version("llama-cpp-python"))')}
BACKENDS=${CORRAL_BACKENDS_DIR:-$HOME/.cache/corral/backends}
DEST="$BACKENDS/$VARIANT-$VERSION"
JOBS=${BUILD_JOBS:-$(nproc)}

case "$VARIANT" in
  vulkan)  FLAGS=(-DGGML_VULKAN=ON) ;;
  cuda)    FLAGS=(-DGGML_CUDA=ON) ;;
  cpu-rpc) FLAGS=() ;;
  *) echo "unknown variant: $VARIANT (vulkan|cuda|cpu-rpc)" >&2; exit 2 ;;
esac

if [ -f "$DEST/variant.json" ] && [ -f "$DEST/lib/libllama.so" ]; then echo "$DEST"; exit 0; fi
mkdir -p "$BACKENDS"
exec 9>"$BACKENDS/.$VARIANT-$VERSION.lock"
flock 9   # one build of a variant at a time; a second caller waits, then finds it built
if [ -f "$DEST/variant.json" ]; then echo "$DEST"; exit 0; fi

SRC=${LLAMA_CPP_SRC:-}
if [ -z "$SRC" ]; then
  SRC="$BACKENDS/src-$VERSION/llama.cpp"
  if [ ! -f "$SRC/CMakeLists.txt" ]; then
    SDIST=${LLAMA_CPP_SDIST:-$HOME/.cache/corral-bench/llama_cpp_python-$VERSION.tar.gz}
    if [ ! -f "$SDIST" ]; then
      SDIST="$BACKENDS/llama_cpp_python-$VERSION.tar.gz"
      [ -f "$SDIST" ] || "$PY" -m pip download --no-deps --no-binary :all: -d "$BACKENDS" \
        "llama-cpp-python==$VERSION" >&2
    fi
    rm -rf "$BACKENDS/src-$VERSION"
    mkdir -p "$BACKENDS/src-$VERSION"
    tar xzf "$SDIST" -C "$BACKENDS/src-$VERSION" "llama_cpp_python-$VERSION/vendor/llama.cpp"
    mv "$BACKENDS/src-$VERSION/llama_cpp_python-$VERSION/vendor/llama.cpp" "$SRC"
    rm -rf "$BACKENDS/src-$VERSION/llama_cpp_python-$VERSION"
  fi
fi

# Vulkan headers older than 1.3.261 (Debian 12 ships 1.3.239) lack VK_EXT_layer_settings; the one
# block that uses it only configures the validation layer, so compile it only where the headers have it.
VKCPP="$SRC/ggml/src/ggml-vulkan/ggml-vulkan.cpp"
if [ "$VARIANT" = vulkan ] && ! grep -q CORRAL_LAYER_SETTINGS_GUARD "$VKCPP"; then
  "$PY" - "$VKCPP" <<'EOF'
import sys
path = sys.argv[1]
text = open(path).read()
start = text.index("    VkBool32 enable_best_practice = layer_settings;\n")
end_marker = "&layer_setting_info);\n"
end = text.index(end_marker, start) + len(end_marker)
guarded = (
    "#if defined(VK_EXT_layer_settings) // CORRAL_LAYER_SETTINGS_GUARD\n" + text[start:end]
    + "#else\n"
    + "    vk::InstanceCreateInfo instance_create_info(vk::InstanceCreateFlags{}, &app_info, layers, extensions);\n"
    + "#endif\n"
)
open(path, "w").write(text[:start] + guarded + text[end:])
EOF
fi

BUILD="$BACKENDS/build-$VARIANT-$VERSION"
TARGETS=(llama ggml mtmd ggml-rpc-server)
[ "${BUILD_LLAMA_SERVER:-0}" = 1 ] && TARGETS+=(llama-server)
START=$(date +%s)
cmake -S "$SRC" -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DBUILD_SHARED_LIBS=ON -DGGML_NATIVE=ON -DGGML_RPC=ON "${FLAGS[@]}" \
  -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
  -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_SERVER="$([ "${BUILD_LLAMA_SERVER:-0}" = 1 ] && echo ON || echo OFF)" \
  -DCMAKE_BUILD_WITH_INSTALL_RPATH=ON '-DCMAKE_INSTALL_RPATH=$ORIGIN:$ORIGIN/../lib' ${EXTRA_CMAKE_ARGS:-} >&2
cmake --build "$BUILD" --target "${TARGETS[@]}" -j "$JOBS" >&2
SECONDS_TAKEN=$(( $(date +%s) - START ))

TMP="$DEST.tmp.$$"
rm -rf "$TMP"
mkdir -p "$TMP/lib" "$TMP/bin"
cp -a "$BUILD"/bin/lib*.so* "$TMP/lib/"
cp "$BUILD/bin/ggml-rpc-server" "$TMP/bin/rpc-server"
[ -x "$BUILD/bin/llama-server" ] && cp "$BUILD/bin/llama-server" "$TMP/bin/"
cat > "$TMP/variant.json" <<EOF
{"variant": "$VARIANT", "llama_cpp_python": "$VERSION", "build_seconds": $SECONDS_TAKEN,
 "cmake_flags": "-DBUILD_SHARED_LIBS=ON -DGGML_NATIVE=ON -DGGML_RPC=ON ${FLAGS[*]:-}"}
EOF
rm -rf "$DEST"
mv "$TMP" "$DEST"
echo "built $VARIANT in ${SECONDS_TAKEN}s" >&2
echo "$DEST"
