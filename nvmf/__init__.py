"""SRRS nvmf."""
