"""SRRS: a user-space block storage controller.

The subpackages live in the repository's top-level folders: ``srrs.ffi`` (C core
and its binding), ``srrs.nvmf``, ``srrs.vhost`` and ``srrs.ctrl`` (control plane).
"""

__version__ = "0.1.0"
