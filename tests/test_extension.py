"""Prove the compiled extension is what the tests exercise: no silent fallback to something slower."""
import importlib
import importlib.machinery

import pytest

MODULES = ["l4emu._batch", "l4emu._datapath", "l4emu._flowtable", "l4emu._pcapread", "l4emu._pcapwrite", "l4emu._sched"]


@pytest.mark.parametrize("name", MODULES)
def test_module_is_a_compiled_extension(name):
    module = importlib.import_module(name)
    assert module.__file__.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES)), module.__file__
    assert type(module.__loader__).__name__ == "ExtensionFileLoader"
