#!/usr/bin/env bash
# Build the extension with clang, AddressSanitizer and libFuzzer coverage into fuzz/build/asan/, a
# shadow of the package (tools/shadow_build.sh), so the normal in-place build is never touched.
# Usage: fuzz/build_asan.sh    then    PYTHONPATH=fuzz/build/asan ... (fuzz/run.sh does all of it)
set -euo pipefail
cd "$(dirname "$0")/.."
CLANG=${CLANG:-clang}
command -v "$CLANG" >/dev/null || { echo "build_asan: $CLANG not found (apt-get install clang libclang-rt-NN-dev)" >&2; exit 1; }

# fuzzer-no-link adds the coverage counters atheris' libFuzzer reads; -fno-omit-frame-pointer keeps
# ASan's stacks whole. L4EMU_DEBUG stays unset: the point is to test the build users run, with
# Cython's bounds checks off and setup.py's -O3 (which comes after CFLAGS and wins over -O1).
export CC=$CLANG CXX=${CLANG}++ LDSHARED="$CLANG -shared"
export CFLAGS="-g -O1 -fno-omit-frame-pointer -fsanitize=address,fuzzer-no-link"
export LDFLAGS="-fsanitize=address,fuzzer-no-link"
unset L4EMU_DEBUG
exec tools/shadow_build.sh fuzz/build/asan
