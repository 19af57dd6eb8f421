"""One wording for a missing optional library: it names what needed it, the library and the extra to install."""
import sys

import pytest

from tinygen import _extras, backend


def test_require_imports_an_installed_module():
    assert _extras.require("json", "dev", "a test").__name__ == "json"


def test_require_names_what_needed_it_the_library_and_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "numpy_missing_probe", None)  # importing it raises ImportError
    with pytest.raises(ImportError) as e:
        _extras.require("numpy_missing_probe", "plot", "drawing the graph", library="probe-lib")
    message = str(e.value)
    assert message.startswith("drawing the graph needs probe-lib, which is not installed")
    assert 'pip install -e ".[plot]"' in message


def test_cuda_without_cupy_names_the_cuda_extra(monkeypatch):
    monkeypatch.setenv("TINYGEN_CUDA_STANDIN", "0")
    monkeypatch.setitem(sys.modules, "cupy", None)
    with pytest.raises(RuntimeError, match=r"device='cuda' needs CuPy, which is not installed; install it with: "
                                           r'pip install -e "\.\[cuda\]"'):
        backend._load_cuda()
