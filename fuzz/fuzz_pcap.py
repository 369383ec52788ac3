"""atheris harness: bytes -> l4emu's pcap/pcapng reader -> a small Switch -> both writers (common.run_capture).

    fuzz/run.sh 60 pcap
"""
import sys
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parent))
with atheris.instrument_imports(include=["common"]):
    from common import run_capture


def main() -> None:
    atheris.Setup(sys.argv, run_capture)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
