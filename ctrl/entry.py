"""The `srrs` console script: `srrs csi ...` (the Kubernetes CSI plugin, a
long-lived container process) starts with its own parser only
(ctrl/csi_cli.py); every other command goes to ctrl/cli.py."""

from __future__ import annotations

import sys
from typing import Optional


def main(argv: Optional[list] = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["csi"]:
        from .csi_cli import main as csi_main

        return csi_main(argv[1:])
    from .cli import main as cli_main

    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main())
