"""The `voicefarm` command: run the farm, its parts, and its admin tasks."""

from __future__ import annotations

import argparse
import sys

from voicefarm.client import commands as client_commands
from voicefarm.ops import commands as farm_commands
from voicefarm.ops import keys as key_commands
from voicefarm.ops import tenants as tenant_commands
from voicefarm.ops import upkeep as upkeep_commands

# Each family of commands registers its parsers and handlers, in this order (the order of `voicefarm --help`):
# the farm's processes; looking after it (qa-thresholds, doctor, reconcile); API keys; tenants' entitlements; the
# API's clients.
FAMILIES = (farm_commands, upkeep_commands, key_commands, tenant_commands, client_commands)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    code: int = args.handler(args)
    return code


def build_parser() -> argparse.ArgumentParser:
    """Every command and option (tests/farm/test_deployment.py checks the deployment files' commands against it)."""
    parser = argparse.ArgumentParser(prog="voicefarm", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for family in FAMILIES:
        family.register(sub)
    return parser


if __name__ == "__main__":
    sys.exit(main())
