#!/usr/bin/env bash
# The README's main job: migrate an old-style (implicit, Flux 0.13) example to the
# explicit style with fluxtrain-migrate, print the rewrite as a diff, then run the
# old and the migrated script side by side and print compare's verdict.
#
#   bash scripts/demo.sh                        # examples/mlp_digits.py
#   bash scripts/demo.sh examples/lr_decay.py   # any old-style script
#
# Exit status: compare's (0 identical, 1 diverged, 2 could not run).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

example=${1:-examples/mlp_digits.py}
name=$(basename "$example")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/old"
cp "$example" "$work/old/$name"

echo "== 1. the rewrite: fluxtrain-migrate $example --diff"
# the codemod's exit status is a bitmask; "changes needed" is the point here
.venv/bin/fluxtrain-migrate "$example" --diff || true

echo
echo "== 2. the migrated copy: fluxtrain-migrate --output-dir"
.venv/bin/fluxtrain-migrate "$work/old/$name" --output-dir "$work/new" >/dev/null || true
new=$(find "$work/new" -name "$name" -type f | head -n 1)
if [ -z "$new" ]; then
    echo "demo: fluxtrain-migrate wrote no migrated copy of $example" >&2
    exit 2
fi

echo
echo "== 3. side by side: fluxtrain-migrate compare $example <migrated>"
rc=0
.venv/bin/fluxtrain-migrate compare "$example" "$new" || rc=$?
exit $rc
