#!/usr/bin/env bash
# Run each atheris harness for a bounded time against the AddressSanitizer build of the extension.
# Usage: fuzz/run.sh [seconds per harness, default 60] [harness ...]    (harnesses: datapath pcap tun hosts methods fragments forward shard gslb)
# Builds fuzz/build/asan/ first when it is missing or older than ext/. New inputs accumulate in
# fuzz/corpus/<harness>/ (seeds are regenerated in fuzz/seeds/; tests/fuzz_cases/<harness>/, the
# regression inputs, run under ASan every time); a crash, a hang (> 5 s) or a failed invariant
# writes fuzz/artifacts/<harness>-crash-* and makes the exit status non-zero.
# Reproduce one: same environment as below, then: python fuzz/harness.py <harness> <artifact>
set -uo pipefail
cd "$(dirname "$0")/.."
SECONDS_EACH=${1:-60}
[ $# -gt 0 ] && shift
if [ $# -gt 0 ]; then HARNESSES=("$@"); else HARNESSES=(datapath pcap tun hosts methods fragments forward shard gslb); fi

ASAN=fuzz/build/asan
newest_src=$(find ext setup.py -newer "$ASAN/build.log" 2>/dev/null | head -1)
if [ ! -f "$ASAN/build.log" ] || [ -n "$newest_src" ] || ! ls "$ASAN"/l4emu/datapath/_datapath*.so >/dev/null 2>&1; then
    fuzz/build_asan.sh || exit 1
fi
python fuzz/make_corpus.py fuzz/seeds || exit 1

ATHERIS_DIR=$(python -c "import atheris; print(atheris.path())") || exit 1
PRELOAD=$ATHERIS_DIR/asan_with_fuzzer.so
[ -f "$PRELOAD" ] || { echo "run.sh: $PRELOAD missing (pip install atheris)" >&2; exit 1; }
mkdir -p fuzz/artifacts

status=0
for name in "${HARNESSES[@]}"; do
    mkdir -p "fuzz/corpus/$name"
    cases=(); [ -d "tests/fuzz_cases/$name" ] && cases=("tests/fuzz_cases/$name")
    log=fuzz/artifacts/$name.log
    # PYTHONMALLOC=malloc: pymalloc arenas would hide over-reads of small bytes objects from ASan.
    # PYTHONSAFEPATH: never put the checkout (and its release build) ahead of PYTHONPATH.
    env PYTHONPATH="$PWD/$ASAN" PYTHONSAFEPATH=1 PYTHONMALLOC=malloc \
        ASAN_OPTIONS=detect_leaks=0:allocator_may_return_null=1 LD_PRELOAD="$PRELOAD" \
        python fuzz/harness.py "$name" -max_total_time="$SECONDS_EACH" -timeout=5 -print_final_stats=1 \
        -artifact_prefix="fuzz/artifacts/$name-" "fuzz/corpus/$name" "fuzz/seeds/$name" "${cases[@]}" \
        >"$log" 2>&1
    rc=$?
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
    cov=$(grep -oE 'cov: [0-9]+' "$log" | tail -1)
    corpus=$(ls "fuzz/corpus/$name" | wc -l)
    if [ $rc -ne 0 ] || grep -qE '==ERROR|ERROR: libFuzzer|Uncaught Python exception|deadly signal' "$log"; then
        echo "fuzz $name: FAILED (exit $rc) after ${runs:-?} runs; see $log and fuzz/artifacts/$name-*"
        grep -m1 -A12 -E '==ERROR|ERROR: libFuzzer|Uncaught Python exception|ALARM' "$log" | head -30
        status=1
    else
        echo "fuzz $name: ${SECONDS_EACH}s, ${runs:-?} runs, ${rate:-?} exec/s, ${cov:-cov: ?}, corpus $corpus, no crash"
    fi
done
exit $status
