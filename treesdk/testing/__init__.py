"""Conformance suite for treesdk backends (see docs/backends.md)."""
