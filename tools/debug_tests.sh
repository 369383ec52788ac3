#!/usr/bin/env bash
# Run the test suite once against a debug build of the extension: Cython bounds checks, wraparound
# and initialized checks on, line tracing, -O0 -g (setup.py's L4EMU_DEBUG=1). The build goes into a
# shadow copy, build/debug/ (tools/shadow_build.sh), so the in-place release build is never touched.
# Usage: tools/debug_tests.sh [pytest args...]      e.g. tools/debug_tests.sh -x -k malformed
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=$ROOT/build/debug
L4EMU_DEBUG=1 "$ROOT/tools/shadow_build.sh" "$OUT"
cd "$OUT"       # pytest's cache and hypothesis' database stay in the shadow too
export PYTHONPATH=$OUT PYTHONSAFEPATH=1   # the shadow first, and never the checkout via the current directory
python - <<PY
import l4emu.datapath._datapath as m, l4emu.io.pcap.reader as c
assert m.__file__.startswith("$OUT/"), f"the debug build is not what is imported: {m.__file__}"
print(f"debug_tests: testing {m.__file__}")
PY
exec python -m pytest -q -p no:cacheprovider "$@" "$ROOT/tests"
