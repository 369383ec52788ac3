"""Build the Cython packet path into the l4emu package: ext/l4emu/X/_y.pyx is the module l4emu.X._y.

The two trees mirror each other (ext/l4emu/datapath/ holds the Cython half of l4emu/datapath/, and so
on), so the source of any extension module is found from its name alone.
L4EMU_DEBUG=1 turns bounds checks, wraparound and line tracing back on for a debug build.
"""
import os
from pathlib import Path

from Cython.Build import cythonize
from setuptools import Extension, setup

DEBUG = os.environ.get("L4EMU_DEBUG") == "1"
EXT = Path("ext")

directives = {
    "language_level": 3,
    "boundscheck": DEBUG,
    "wraparound": DEBUG,
    "initializedcheck": DEBUG,
    "cdivision": True,
    "embedsignature": True,
}
macros = []
if DEBUG:
    directives.update(linetrace=True, binding=True)
    macros.append(("CYTHON_TRACE_NOGIL", "1"))


def module_name(pyx: Path) -> str:
    """ext/l4emu/datapath/_batch.pyx -> l4emu.datapath._batch"""
    return ".".join(pyx.relative_to(EXT).with_suffix("").parts)


extensions = [
    Extension(
        module_name(pyx),
        [str(pyx)],
        define_macros=macros,
        extra_compile_args=["-O3"] if not DEBUG else ["-O0", "-g"],
    )
    for pyx in sorted(EXT.glob("l4emu/**/*.pyx"))
]

setup(
    ext_modules=cythonize(
        extensions,
        include_path=[str(EXT)],
        compiler_directives=directives,
        build_dir="build/cython",
    ),
)
