#!/bin/sh
# Build llama.cpp's `llama-server` from the llama.cpp checkout vendored in the llama-cpp-python sdist,
# and cache the binary (issue 21): `make llama-server`. The tests that use it find it at
# $STREAMWATCH_LLAMA_SERVER or $CACHE/llama-server and skip with a reason when it is absent.
#
#   LLAMA_CPP_PY   llama-cpp-python sdist version (default 0.3.36: vendored llama.cpp 0c1e570)
#   CACHE          where the binary, the sdist and the build tree go (default ~/.cache/streamwatch/llama.cpp)
#   JOBS           parallel compile jobs (default 1; the build is ~19 min with -j2 on a busy 2-core machine)
#   PY             a Python with pip, to download the sdist (default python3)
set -eu
VERSION="${LLAMA_CPP_PY:-0.3.36}"
CACHE="${CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/streamwatch/llama.cpp}"
JOBS="${JOBS:-1}"
PY="${PY:-python3}"
OUT="$CACHE/llama-server"
if [ -x "$OUT" ] && [ -f "$CACHE/VERSION" ] && [ "$(cat "$CACHE/VERSION")" = "$VERSION" ]; then
    echo "llama-server $VERSION already built: $OUT"
    exit 0
fi
command -v cmake >/dev/null || { echo "cmake is missing: apt-get install -y cmake g++" >&2; exit 1; }
mkdir -p "$CACHE"
SDIST="$CACHE/llama_cpp_python-$VERSION.tar.gz"
if [ ! -f "$SDIST" ]; then
    "$PY" -m pip download -q --no-deps --no-binary llama-cpp-python -d "$CACHE" "llama-cpp-python==$VERSION"
fi
SRC="$CACHE/src-$VERSION"
if [ ! -d "$SRC/vendor/llama.cpp" ]; then
    rm -rf "$SRC" && mkdir -p "$SRC"
    tar -xzf "$SDIST" -C "$SRC" --strip-components=1
fi
LLAMA="$SRC/vendor/llama.cpp"
start=$(date +%s)
cmake -S "$LLAMA" -B "$LLAMA/build" -DLLAMA_CURL=OFF -DGGML_NATIVE=ON -DLLAMA_BUILD_TESTS=OFF \
    -DLLAMA_BUILD_EXAMPLES=OFF -DCMAKE_BUILD_TYPE=Release >"$CACHE/cmake.log"
cmake --build "$LLAMA/build" -j "$JOBS" --target llama-server >"$CACHE/build.log"
# the binary links llama.cpp's shared libraries by rpath: keep them beside it
mkdir -p "$CACHE/bin"
cp "$LLAMA/build/bin/"* "$CACHE/bin/" 2>/dev/null || true
find "$LLAMA/build" -name '*.so*' -exec cp -P {} "$CACHE/bin/" \;
cat >"$OUT" <<WRAP
#!/bin/sh
LD_LIBRARY_PATH="$CACHE/bin\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}" exec "$CACHE/bin/llama-server" "\$@"
WRAP
chmod +x "$OUT"
echo "$VERSION" >"$CACHE/VERSION"
echo "llama-server $VERSION built in $(( $(date +%s) - start )) s with -j$JOBS: $OUT"
