"""Tests of the shared modules (shared/)."""
