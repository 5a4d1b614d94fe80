"""Explicit converters between the REST models and the protobuf messages,
one module per backend service."""
