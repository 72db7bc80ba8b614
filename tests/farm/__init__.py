"""Tests of whole farms: real processes, faults, deployment, the CLI and the browser."""
