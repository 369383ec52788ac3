"""atheris harness: bytes -> frames on one link type -> a fresh small Switch (common.run_frames).

    fuzz/run.sh 60 datapath             # the ASan build, as it should be run
    python fuzz/fuzz_datapath.py -runs=1000 fuzz/seeds/datapath    # plain build, no sanitizer
"""
import sys
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parent))
with atheris.instrument_imports(include=["common"]):
    from common import run_frames


def main() -> None:
    atheris.Setup(sys.argv, run_frames)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
