#!/usr/bin/env bash
# Audit the installed dependencies for published vulnerabilities (pip-audit, OSV database).
# Where that database cannot be reached, say so and skip: the audit needs it, nothing else does.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
if ! "$VENV/bin/python" - <<'PY'
import sys, urllib.error, urllib.request
try:
    urllib.request.urlopen("https://api.osv.dev/v1/query", data=b"{}", timeout=5)
except urllib.error.HTTPError:
    pass  # it answered
except OSError:
    sys.exit(1)
PY
then
  echo "dependency audit SKIPPED: the OSV vulnerability database cannot be reached from this machine"
  exit 0
fi
"$VENV/bin/pip" install --quiet pip-audit
"$VENV/bin/pip" freeze --exclude-editable > "$VENV/audit-requirements.txt"
"$VENV/bin/pip-audit" --vulnerability-service osv --progress-spinner off \
  --requirement "$VENV/audit-requirements.txt" --no-deps --disable-pip
