"""atheris entry point of every harness: `harness.py NAME [libFuzzer options] [corpus dirs or an input]`
runs common.HARNESSES[NAME] (datapath, pcap, tun, hosts) on each input.

    fuzz/run.sh 60 tun                                     # the ASan build, as it should be run
    python fuzz/harness.py datapath -runs=1000 fuzz/seeds/datapath    # plain build, no sanitizer
"""
import sys
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parent))
with atheris.instrument_imports(include=["common"]):
    from common import HARNESSES


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in HARNESSES:
        sys.exit(f"usage: harness.py {{{','.join(HARNESSES)}}} [libFuzzer options] [corpus ...]")
    body = HARNESSES[sys.argv.pop(1)]
    atheris.Setup(sys.argv, body)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
