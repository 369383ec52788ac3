"""Test-only drivers (ext/l4emu/testing/): C entry points of the packet path that only the tests,
fuzzers and benchmarks call. No production module imports this package."""
