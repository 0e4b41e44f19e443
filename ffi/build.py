"""cffi builder: one extension, `srrs.ffi._srrs`, from every C file of the
data plane (ffi/, nvmf/, vhost/). The Python-visible API is the contract
headers read verbatim into cdef (ffi/srrs.h, then nvmf/nvmf.h and
vhost/vhost.h when they exist).

Environment: SRRS_SANITIZE=1 builds with AddressSanitizer + UBSan,
SRRS_DEBUG=1 with -O0 -g, SRRS_WERROR=1 turns warnings into errors (CI sets
it; a user's `pip install` never does, so a newer compiler's new warning
cannot break an install).
"""

import os
from pathlib import Path

from cffi import FFI

ROOT = Path(__file__).resolve().parent.parent
MODULE_DIRS = ["ffi", "nvmf", "vhost"]
CONTRACTS = ["ffi/srrs.h", "ffi/lvol.h", "ffi/mirror.h", "nvmf/nvmf.h", "vhost/vhost.h"]


def _sources():
    out = []
    for d in MODULE_DIRS:
        out += sorted(str(p.relative_to(ROOT)) for p in (ROOT / d).glob("*.c"))
    return out


def _cdef():
    text = []
    for h in CONTRACTS:
        p = ROOT / h
        if p.exists():
            text.append(p.read_text())
    return "\n".join(text)


def _flags():
    cflags = ["-std=gnu11", "-Wall", "-Wextra", "-Wno-unused-parameter",
              "-fno-strict-aliasing", "-pthread", "-fvisibility=hidden"]
    if os.environ.get("SRRS_WERROR") == "1":
        cflags.append("-Werror")
    ldflags = ["-pthread"]
    if os.environ.get("SRRS_DEBUG"):
        cflags += ["-O0", "-g"]
    else:
        cflags += ["-O2", "-g"]
    if os.environ.get("SRRS_SANITIZE"):
        cflags += ["-fsanitize=address,undefined", "-fno-omit-frame-pointer",
                   "-fno-sanitize-recover=undefined"]
        ldflags += ["-fsanitize=address,undefined"]
    return cflags, ldflags


ffibuilder = FFI()
ffibuilder.cdef(_cdef())
_cflags, _ldflags = _flags()
_includes = "\n".join(f'#include "{h}"' for h in CONTRACTS if (ROOT / h).exists())
ffibuilder.set_source(
    "srrs.ffi._srrs",
    _includes,
    sources=_sources(),
    include_dirs=[str(ROOT)],
    extra_compile_args=_cflags,
    extra_link_args=_ldflags,
    libraries=["crypto"],  # OpenSSL libcrypto: DH-HMAC-CHAP (nvmf/auth.c), the mirror link's MACs (ffi/mirror_auth.c)
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
