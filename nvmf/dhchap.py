"""DH-HMAC-CHAP secrets for the NVMe/TCP target and our initiator.

A secret lives only in a file (mode 0600 or stricter, refused otherwise) in
the ``DHHC-1:<hh>:<base64>:`` format that ``nvme gen-dhchap-key`` writes. It
is read when a host entry is applied and handed to the C core; it never goes
to logs, status, saved config or RPC output (those carry the file path).
"""

from __future__ import annotations

import os
import re
import stat

HASHES = {"sha256": 1, "sha384": 2, "sha512": 3}
DHGROUPS = {"null": 0, "ffdhe2048": 1, "ffdhe3072": 2, "ffdhe4096": 3, "ffdhe6144": 4,
            "ffdhe8192": 5}
DEFAULT_HASH = "sha256"
DEFAULT_DHGROUP = "ffdhe2048"
_FORMAT = re.compile(r"^DHHC-1:[0-9]{2}:[A-Za-z0-9+/]+={0,2}:?$")


def read_secret(path: str, key: str = "dhchap_secret_file") -> str:
    """The secret in `path`, after checking that only its owner can read it.
    Raises ValueError naming `key` and the path (never the content)."""
    if not isinstance(path, str) or not path:
        raise ValueError(f"{key}: expected a file path")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as e:
        raise ValueError(f"{key}: cannot open {path}: {e.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ValueError(f"{key}: {path} is not a regular file")
        if st.st_mode & 0o077:
            raise ValueError(f"{key}: {path} has mode {stat.S_IMODE(st.st_mode):04o}; a secret "
                             f"file must be readable by its owner only (chmod 600)")
        data = os.read(fd, 4096)
    finally:
        os.close(fd)
    try:
        text = data.decode("ascii").strip()
    except UnicodeDecodeError:
        raise ValueError(f"{key}: {path} is not a DHHC-1 secret") from None
    if not _FORMAT.match(text):
        raise ValueError(f"{key}: {path} is not a DHHC-1:<hh>:<base64>: secret")
    return text


def hash_id(name: str, key: str = "dhchap_hash") -> int:
    if name not in HASHES:
        raise ValueError(f"{key}: must be one of {', '.join(HASHES)}")
    return HASHES[name]


def dhgroup_id(name: str, key: str = "dhchap_dhgroup") -> int:
    if name not in DHGROUPS:
        raise ValueError(f"{key}: must be one of {', '.join(DHGROUPS)}")
    return DHGROUPS[name]
