"""Prove the compiled extension is what the tests exercise: no silent fallback to something slower."""
import importlib
import importlib.machinery
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Every module ext/ builds (ext/l4emu/X/_y.pyx is l4emu.X._y), so a new one cannot go untested.
MODULES = sorted(".".join(p.relative_to(ROOT / "ext").with_suffix("").parts)
                 for p in (ROOT / "ext").glob("l4emu/**/*.pyx"))


@pytest.mark.parametrize("name", MODULES)
def test_module_is_a_compiled_extension(name):
    module = importlib.import_module(name)
    assert module.__file__.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES)), module.__file__
    assert type(module.__loader__).__name__ == "ExtensionFileLoader"
