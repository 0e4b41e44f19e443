#!/usr/bin/env python3
"""Print a one-line apt "deb" entry for CODENAME-backports, derived from the
machine's own Debian entry for CODENAME (deb822 *.sources or one-line *.list):
same mirror URI, components and keyring. Exit 1 when there is none.

    backports_source.py bookworm > $CACHE/apt-backports/sources.list
"""

import glob
import re
import sys


def entries(code: str):
    for f in sorted(glob.glob("/etc/apt/sources.list.d/*.sources")):
        for stanza in re.split(r"\n\s*\n", open(f).read()):
            kv = {}
            for line in stanza.splitlines():
                if line.strip() and not line.lstrip().startswith("#") and ":" in line:
                    k, v = line.split(":", 1)
                    kv[k.strip().lower()] = v.strip()
            if "deb" in kv.get("types", "").split() and code in kv.get("suites", "").split():
                yield kv["uris"].split()[0], kv.get("components", "main"), kv.get("signed-by")
    for f in ["/etc/apt/sources.list"] + sorted(glob.glob("/etc/apt/sources.list.d/*.list")):
        try:
            lines = open(f).read().splitlines()
        except OSError:
            continue
        for line in lines:
            m = re.match(r"\s*deb\s+(\[[^]]*\]\s+)?(\S+)\s+(\S+)\s+(.*)", line)
            if m and m.group(3) == code:
                sb = re.search(r"signed-by=([^\s\]]+)", m.group(1) or "")
                yield m.group(2), m.group(4).strip(), sb.group(1) if sb else None


def main() -> int:
    code = sys.argv[1]
    for uri, comps, signed in entries(code):
        opt = f" [signed-by={signed}]" if signed else ""
        print(f"deb{opt} {uri} {code}-backports {comps}")
        return 0
    return 1


if __name__ == "__main__":
    sys.exit(main())
