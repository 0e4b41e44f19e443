"""SRRS ffi."""
