#!/usr/bin/env bash
# CI entry point: from a fresh clone on a fresh Debian bookworm machine (root, no stdin), install
# what the build needs, bootstrap Pants (./pants does that itself on first use), check BUILD files,
# lint, run every test and build the deployable PEXes. Every step runs even if an earlier check
# failed (except when the toolchain itself can't be installed), a summary is printed at the end, and
# the exit status is non-zero if any step failed or no test ran. Safe to run again (idempotent).
#
#   bash .ci/run            # what CI runs (CI=true)
#   CI_SKIP_PACKAGE=1 bash .ci/run
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
exec </dev/null

export CI="${CI:-true}"
export HOME="${HOME:-/root}"
export DEBIAN_FRONTEND=noninteractive
export PANTS_DYNAMIC_UI=false        # plain log lines, no progress bars
export PANTS_PANTSD=false            # no daemon left behind after CI
export PANTS_COLORS=false
TEST_TIMEOUT_S="${CI_TEST_TIMEOUT_S:-1500}"
REPORT_DIR="${ROOT}/dist/test/reports"

RUN_START=$(date +%s)
STEP_NAMES=()
STEP_STATUS=()
STEP_SECONDS=()
FAILED=0

banner() { printf '\n==== %s ====\n' "$*"; }

# step NAME COMMAND...: run it, record status and duration, never abort the script.
step() {
  local name="$1"
  shift
  banner "$name: $*"
  local t0 rc
  t0=$(date +%s)
  "$@"
  rc=$?
  STEP_NAMES+=("$name")
  STEP_SECONDS+=($(($(date +%s) - t0)))
  if ((rc == 0)); then
    STEP_STATUS+=("ok")
  else
    STEP_STATUS+=("FAILED (exit ${rc})")
    FAILED=1
  fi
  return "$rc"
}

summary() {
  banner "summary"
  local i
  for i in "${!STEP_NAMES[@]}"; do
    printf '  %-22s %-18s %5ss\n' "${STEP_NAMES[$i]}" "${STEP_STATUS[$i]}" "${STEP_SECONDS[$i]}"
  done
  printf '  %-22s %-18s %5ss\n' "total" "" "$(($(date +%s) - RUN_START))"
  if ((FAILED)); then
    echo "CI: FAILED"
  else
    echo "CI: OK"
  fi
  # Last line, plain: "tests: N passed, N failed, N skipped".
  [[ -z "${TEST_COUNTS:-}" ]] || echo "$TEST_COUNTS"
}

# ---- 1. system packages -------------------------------------------------------------------
apt_install() {
  local sudo="" missing=()
  [[ "$(id -u)" != 0 ]] && sudo="sudo"
  command -v redis-server >/dev/null || missing+=(redis-server)
  command -v protoc >/dev/null || missing+=(protobuf-compiler)
  command -v grpc_python_plugin >/dev/null || missing+=(protobuf-compiler-grpc)
  [[ -f /usr/include/google/protobuf/descriptor.proto ]] || missing+=(libprotobuf-dev)
  command -v zip >/dev/null || missing+=(zip)
  # tests/e2e/other_language_test.py drives the services from a Node.js client.
  command -v node >/dev/null || missing+=(nodejs)
  command -v npm >/dev/null || missing+=(npm)
  command -v git >/dev/null || missing+=(git)
  # The README's TLS block (run by tests/readme) makes its certificates with the openssl CLI.
  command -v openssl >/dev/null || missing+=(openssl)
  [[ -f /etc/ssl/certs/ca-certificates.crt ]] || missing+=(ca-certificates)
  # tests/browser drives the console in headless Chromium through Selenium, with Debian's browser and
  # its matching driver (/usr/bin/chromium, /usr/bin/chromedriver): no browser is downloaded.
  command -v chromium >/dev/null || missing+=(chromium)
  command -v chromedriver >/dev/null || missing+=(chromium-driver)
  if ! command -v python3.11 >/dev/null && ! ls "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.11*/bin/python3.11 >/dev/null 2>&1; then
    missing+=(python3 python3-venv)
  fi
  if ((${#missing[@]} == 0)); then
    echo "all system packages present"
    return 0
  fi
  echo "installing: ${missing[*]}"
  local attempt
  for attempt in 1 2 3; do
    $sudo apt-get update -qq && break
    echo "apt-get update failed (attempt ${attempt}); retrying" >&2
    sleep $((attempt * 5))
  done
  # Keep apt from starting a redis-server on 6379 (a shared one may already run there, and tests
  # start their own on free ports): a policy-rc.d that denies service starts, for this install only.
  local policy=/usr/sbin/policy-rc.d added_policy=0
  if [[ ! -e "$policy" ]]; then
    printf '#!/bin/sh\nexit 101\n' | $sudo tee "$policy" >/dev/null && $sudo chmod +x "$policy" && added_policy=1
  fi
  $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
  local rc=$?
  ((added_policy)) && $sudo rm -f "$policy"
  return "$rc"
}

check_python39() {
  # Pants 2.17.1 (the newest on PyPI) runs only on CPython 3.9; Debian bookworm does not package
  # 3.9, the machines of this project carry it under pyenv. See docs/build.md.
  local py
  for py in "${PANTS_BOOTSTRAP_PYTHON:-}" "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.9*/bin/python3.9 \
    "$(command -v python3.9 || true)"; do
    if [[ -n "$py" && -x "$py" ]]; then
      echo "Pants runs on: $py ($("$py" --version 2>&1))"
      return 0
    fi
  done
  echo "no CPython 3.9 found (needed by Pants 2.17.1): install one or set PANTS_BOOTSTRAP_PYTHON" >&2
  return 1
}

# ---- 2. Pants goals ---------------------------------------------------------------------------
run_tests() {
  rm -rf "$REPORT_DIR"
  # --force: run every test even if Pants' cache holds a result for the same inputs.
  timeout --signal=INT --kill-after=60 "$TEST_TIMEOUT_S" ./pants test --force --test-report ::
}

count_tests() {
  # Sum the JUnit reports Pants wrote (one per test file) into "tests: N passed, N failed".
  python3 - "$REPORT_DIR" <<'PY'
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

total = failed = skipped = 0
files = sorted(Path(sys.argv[1]).glob("**/*.xml")) if Path(sys.argv[1]).is_dir() else []
for path in files:
    root = ET.parse(path).getroot()
    for suite in ([root] if root.tag == "testsuite" else root.iter("testsuite")):
        total += int(suite.get("tests", 0))
        failed += int(suite.get("failures", 0)) + int(suite.get("errors", 0))
        skipped += int(suite.get("skipped", 0))
passed = total - failed - skipped
print(f"JUnit reports: {len(files)} test files, {total} tests", file=sys.stderr)
print(f"tests: {passed} passed, {failed} failed, {skipped} skipped")
sys.exit(0 if total > 0 else 5)
PY
}

step "system packages" apt_install || { summary; exit 1; }
step "python 3.9 for pants" check_python39 || { summary; exit 1; }
step "pants bootstrap" ./pants --version || { summary; exit 1; }
step "build files" ./pants tailor --check update-build-files --check ::
step "lint" ./pants lint ::
# readme: quickstart (README's first command: a local stack runs the example workflow end to end)
step "quickstart" ./pants run services/cli -- dev
step "test" run_tests
if TEST_COUNTS="$(count_tests)"; then
  :
else
  rc=$?
  ((rc == 5)) && echo "no test ran" >&2
  [[ -n "$TEST_COUNTS" ]] || TEST_COUNTS="tests: no JUnit reports found"
  FAILED=1
fi
if [[ -z "${CI_SKIP_PACKAGE:-}" ]]; then
  step "package" ./pants package ::
fi
summary
exit "$FAILED"
