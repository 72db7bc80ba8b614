"""Tests of the HTTP API (producer/)."""
