"""SRRS vhost."""
