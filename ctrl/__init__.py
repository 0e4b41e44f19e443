"""SRRS ctrl."""
