import os

from setuptools import setup
from setuptools.command.build_ext import build_ext
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))


def gen_csi() -> None:
    """ctrl/csi_pb2.py from ctrl/csi.proto with grpcio-tools (docs/architecture.md,
    Kubernetes CSI plugin): generated at build time, never committed. Always
    made again: the last build (ci/setup's in-place one, with the machine's
    grpcio-tools) must match the protobuf runtime installed beside it."""
    src, out = os.path.join(HERE, "ctrl", "csi.proto"), os.path.join(HERE, "ctrl", "csi_pb2.py")
    import grpc_tools
    from grpc_tools import protoc

    wkt = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
    if protoc.main(["protoc", f"-I{os.path.dirname(src)}", f"-I{wkt}",
                    f"--python_out={os.path.dirname(out)}", src]) != 0:
        raise RuntimeError("protoc failed on ctrl/csi.proto")


class BuildPy(build_py):
    def run(self):
        gen_csi()
        super().run()


class BuildExt(build_ext):
    def run(self):
        gen_csi()
        super().run()


setup(cffi_modules=["ffi/build.py:ffibuilder"], cmdclass={"build_py": BuildPy, "build_ext": BuildExt})
