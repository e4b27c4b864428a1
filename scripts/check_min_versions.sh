#!/usr/bin/env bash
# Proves pyproject.toml's lower bounds: a throwaway venv gets every direct dependency at exactly
# its `>=` bound (torch aside: pinned to the local CPU wheel, `TORCH=`; an unpinned torch would pull
# GBs of CUDA), then the fast tests that exercise them run there. A failure means a bound is too
# low: raise it in pyproject.toml. `make test-min` runs this; .ci/run runs it after `make test`.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
TORCH="${TORCH:-torch==2.13.0}"
TESTS=(
  tests/unit/test_compare.py tests/unit/test_history.py tests/unit/test_suite_validation.py
  tests/unit/test_report_page.py tests/unit/test_report_figures.py tests/unit/test_tables.py
  tests/unit/test_baseline_export.py
)

work="$(mktemp -d "${TMPDIR:-/tmp}/min-versions.XXXXXX")"
trap 'rm -rf "$work"' EXIT

# name==bound for every `name>=bound` in [project].dependencies, torch excluded.
bounds="$("$PYTHON" - <<'EOF'
import re
from pathlib import Path

text = Path("pyproject.toml").read_text()
block = re.search(r"^dependencies = \[(.*?)^\]", text, re.S | re.M)
assert block, "pyproject.toml: no [project] dependencies list"
for line in block.group(1).splitlines():
    spec = re.match(r'\s*"([A-Za-z0-9_.\-]+)\s*>=\s*([^",;\s]+)', line)
    if spec is None:
        if '"' in line.split("#")[0]:
            raise SystemExit(f"pyproject.toml: a dependency without a >= bound: {line.strip()}")
        continue
    if spec.group(1).lower() != "torch":
        print(f"{spec.group(1)}=={spec.group(2)}")
EOF
)"
mapfile -t pins <<<"$bounds"
echo "minimum versions: ${pins[*]} (+ $TORCH)"

pip_q() {  # pip, quiet; its whole log only when it fails
  echo "[${SECONDS}s] pip $*"
  if ! "$work/venv/bin/python" -m pip "$@" >"$work/pip.log" 2>&1; then
    cat "$work/pip.log" >&2
    return 1
  fi
}

"$PYTHON" -m venv "$work/venv"
pip_q install "$TORCH"
pip_q install "${pins[@]}"
pip_q install --no-deps -e .
pip_q install pytest pytest-timeout pytest-benchmark
pip_q check
"$work/venv/bin/python" -m pip list 2>/dev/null |
  grep -iE '^(torch|pydantic|typer|click|rich|pandas|numpy|pyyaml|plotly|scipy) ' | tr -s ' ' |
  paste -sd ',' | sed 's/,/, /g'

# The CLI's help (typer with whatever click resolved) is not covered by the tests below.
for args in "--help" "run --help" "compare --help"; do
  # shellcheck disable=SC2086
  "$work/venv/bin/harness" $args >/dev/null
done
echo "[${SECONDS}s] pytest"
"$work/venv/bin/python" -m pytest -q -p no:cacheprovider "${TESTS[@]}"
