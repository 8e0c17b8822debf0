"""The cffi builder for smolvision's C engine.

The declarations come straight from the public header (the part between the
SV_CDEF markers), so the C API is written down exactly once.  CMake runs
`python build_ext.py OUT.c` to emit the module's C source and compiles it
against libsmolvision.
"""
from __future__ import annotations

import pathlib
import re
import sys

import cffi

HERE = pathlib.Path(__file__).resolve().parent
HEADER = HERE / "csrc" / "smolvision.h"

# Python functions the C side calls back into: _sv_on_log in smolvision/model.py (load-time messages such
# as quantizing).
PYTHON_CALLBACKS = """
extern "Python" void _sv_on_log(void *, const char *);
"""


def public_declarations(header: pathlib.Path = HEADER) -> str:
    """Returns the cffi-ready declarations of the public header."""
    text = header.read_text()
    match = re.search(r"/\* SV_CDEF_BEGIN \*/(.*)/\* SV_CDEF_END \*/", text, re.S)
    if not match:
        raise SystemExit(f"{header}: SV_CDEF markers not found")
    return match.group(1)


def make_ffi() -> cffi.FFI:
    ffi = cffi.FFI()
    ffi.cdef(public_declarations() + PYTHON_CALLBACKS)
    ffi.set_source("smolvision._smolvision", '#include "smolvision.h"', libraries=["smolvision"])
    return ffi


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: python build_ext.py OUTPUT.c")
    make_ffi().emit_c_code(sys.argv[1])
