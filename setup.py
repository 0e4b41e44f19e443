from setuptools import setup

setup(cffi_modules=["ffi/build.py:ffibuilder"])
