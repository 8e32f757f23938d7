#!/bin/bash
# Are two llama.cpp builds of one commit and flags, compiled in different directories, the same
# bytes? Two cold builds (no ccache) of llama-server b11312 from the sandbox's git mirror, with
# the cmake flags rigkit's CPU build uses, under W/<mode>-a/tree and W/<mode>-b/other/place;
# then their sha256, the count of differing bytes and the strings that differ.
#
#   benchmarks/reproducible.sh          # with rigkit's -ffile-prefix-map (llama_host.py)
#   benchmarks/reproducible.sh --plain  # without it: what differed before
#
# About 6 minutes per build on 2 cores; run it under the e2e lock on a shared machine.
set -u
MODE=fixed; [ "${1:-}" = --plain ] && MODE=plain
W=${W:-/tmp/rigkit-reproducible}
MIRROR=${MIRROR:-/var/cache/rigkit/mirrors/llama.cpp.git}
REF=${REF:-b11312}
FLAGS=(-DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF -DGGML_CCACHE=OFF -DLLAMA_CURL=OFF
       -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_BUILD_UI=OFF -DLLAMA_BUILD_TESTS=OFF -DGGML_CUDA=OFF)
one() {
  local tree=$1
  rm -rf "$tree"; mkdir -p "$tree"
  git clone -q --shared --no-checkout "$MIRROR" "$tree/src"
  git -C "$tree/src" -c advice.detachedHead=false checkout -q "$REF"
  local extra=()
  if [ $MODE = fixed ]; then  # as llama_host.py's reproducible_flags
    extra=("-DCMAKE_C_FLAGS=-ffile-prefix-map=$tree=/rigkit/llama.cpp" "-DCMAKE_CXX_FLAGS=-ffile-prefix-map=$tree=/rigkit/llama.cpp")
  fi
  env -u LANG LC_ALL=C cmake -S "$tree/src" -B "$tree/build" "${FLAGS[@]}" "${extra[@]}" >"$tree.log" 2>&1 &&
    env -u LANG LC_ALL=C cmake --build "$tree/build" -j"$(nproc)" --target llama-server >>"$tree.log" 2>&1
}
A=$W/$MODE-a/tree; B=$W/$MODE-b/other/place
time one "$A" && time one "$B" || { echo "build failed: see $A.log, $B.log"; exit 1; }
ls -l "$A/build/bin/llama-server" "$B/build/bin/llama-server"
sha256sum "$A/build/bin/llama-server" "$B/build/bin/llama-server"
echo "differing bytes: $(cmp -l "$A/build/bin/llama-server" "$B/build/bin/llama-server" 2>/dev/null | wc -l)"
echo "build paths in the binary: $(strings -n 6 "$A/build/bin/llama-server" | grep -c "$A")"
diff <(strings -n 6 "$A/build/bin/llama-server") <(strings -n 6 "$B/build/bin/llama-server") | grep '^[<>]' | grep / | head -20
