"""The one RPC method table of a controller: every module's declared methods
(srrs.rpcdef), merged by plain imports. The server (ctrl/rpc.py) serves it
and the command line (ctrl/cli.py) is generated from it; docs/rpc.md is
written from it (tests/ctrl/test_cli_generated.py checks it is current)."""

from __future__ import annotations

import json

from ..nvmf import rpc as nvmf_rpc
from ..rpcdef import MethodTable, kinds_table
from ..vhost import rpc as vhost_rpc
from . import cluster_rpc, core_rpc, pair_rpc, pool_rpc

TABLE = MethodTable()
for _module in (core_rpc, nvmf_rpc, vhost_rpc, pool_rpc, pair_rpc, cluster_rpc):
    TABLE.merge(_module.METHODS)


@TABLE.method("rpc_methods", noun="methods")
def rpc_methods(ctl, p: dict):
    """Every RPC method with its params (name, type, required, default, help),
    when it is allowed and its command line."""
    return [m.to_json() for m in TABLE]


def markdown() -> str:
    """docs/rpc.md: the error codes and every method with its params."""
    out = ["# RPC methods", "",
           "Generated from the declarations (`srrs.rpcdef`, merged in `ctrl/methods.py`) by",
           "`python -m srrs.ctrl.methods > docs/rpc.md`; a test fails when it is stale.",
           "Each method is also `srrs NOUN VERB --PARAM ...` on the command line.", "",
           "## Errors", "", "| code | kind | raised as |", "| --- | --- | --- |"]
    out += [f"| {c} | {k} | `{n}` |" for c, k, n in kinds_table()]
    out += ["", "A core error (an errno) answers with the kind its errno names (ENOENT: not",
            "found, EEXIST: already exists, EBUSY: busy, ENOSPC/EDQUOT: no space, EACCES/",
            "EPERM: unauthorized, EIO: I/O error, EINVAL: invalid params), `data.errno` set;",
            "any other errno is -32000.", "", "## Methods", ""]
    for m in TABLE:
        when = "" if m.when == "both" else f" (only at {m.when})"
        cli = f"srrs {m.noun} {m.verb}".strip()
        out += [f"### `{m.name}`{when}", "", f"`{cli}`: " + " ".join(m.help.split()), ""]
        if m.params:
            out += ["| param | type | default | help |", "| --- | --- | --- | --- |"]
            for p in m.params:
                d = "required" if p.required else ("-" if p.default is None else f"`{json.dumps(p.default)}`")
                t = "|".join(p.types) + (f" ({', '.join(map(str, p.choices))})" if p.choices else "")
                out.append(f"| `{p.name}` | {t.replace('|', ' or ')} | {d} | {p.help} |")
            out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    print(markdown())
