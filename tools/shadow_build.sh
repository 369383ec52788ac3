#!/usr/bin/env bash
# Build a variant of the extension (sanitizer, debug) into a shadow copy of the package, so that the
# in-place release build in l4emu/ is never touched. The shadow's .py files are symlinks to the real
# ones (edits show up at once); ext/ is copied and compiled with whatever CC/CFLAGS/L4EMU_DEBUG the
# caller exports. Use it with PYTHONPATH=<dir> PYTHONSAFEPATH=1 (so the checkout's own l4emu/, which
# `python -m` would put first on sys.path from the current directory, never shadows it).
# Usage: tools/shadow_build.sh DIR    (DIR should be git-ignored: build/ and fuzz/build/ are)
set -euo pipefail
[ $# -eq 1 ] || { echo "usage: $0 DIR" >&2; exit 2; }
ROOT=$(cd "$(dirname "$0")/.." && pwd)
# setup.py needs the build requirements, which `pip install` keeps in an isolated environment of its own
python -c 'import Cython, setuptools' 2>/dev/null || {
    echo "shadow_build: Cython and setuptools are needed to compile: pip install -e \".[test]\" (or pip install 'Cython>=3.0' setuptools)" >&2
    exit 2; }

mkdir -p "$1"
OUT=$(cd "$1" && pwd)
case "$OUT" in "$ROOT"|"$ROOT/l4emu"*|"$ROOT/ext"*) echo "shadow_build: refusing to build into $OUT" >&2; exit 2;; esac

rm -rf "$OUT/l4emu" "$OUT/ext"
cp -rs "$ROOT/l4emu" "$OUT/l4emu"
find "$OUT/l4emu" \( -name '*.so' -o -name __pycache__ \) -prune -exec rm -rf {} +
cp -r "$ROOT/ext" "$OUT/ext"
ln -sf "$ROOT/setup.py" "$OUT/setup.py"

cd "$OUT"
python setup.py -q build_ext --inplace -j 2 >build.log 2>&1 || { tail -40 build.log >&2; exit 1; }
count=$(find l4emu -name '*.so' | wc -l)
[ "$count" -eq "$(find ext/l4emu -name '*.pyx' | wc -l)" ] || { echo "shadow_build: only $count modules built" >&2; exit 1; }
echo "shadow_build: $count modules built in $OUT/l4emu"
