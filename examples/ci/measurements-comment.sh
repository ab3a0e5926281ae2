#!/usr/bin/env bash
# The pull-request comment of examples/ci/tdxvm-pull-request.yml: for each backend, which registers
# the change moves and why (`tdxvm diff --markdown` of the base branch's committed measurements and
# this pull request's), behind a marker line the workflow finds the comment by.
#
#   measurements-comment.sh OUT.md BASE_DIR PR_DIR BACKEND...
#
# BASE_DIR/measurements.<backend>.json: the base branch's committed file (may be missing: a new
# file); PR_DIR/measurements.<backend>.json: `tdxvm measure … --out` of the pull request.
set -euo pipefail
out=$1 base=$2 pr=$3
shift 3
tdxvm=(${TDXVM:-npx --no-install tdxvm})
{
  echo "<!-- tdxvm-measurements -->"
  echo "## Image measurements"
  echo
  for b in "$@"; do
    if [[ -s "$base/measurements.$b.json" ]]; then
      "${tdxvm[@]}" diff --markdown "$base/measurements.$b.json" "$pr/measurements.$b.json"
    else
      echo "### Measurement changes ($b)"
      echo
      echo "The base branch has no measurements.$b.json: nothing to compare with."
    fi
    echo
  done
  echo "<sub>Registers tdxvm computes from the baked image (\`tdxvm measure\`); under each backend, the registers no value pins (WAIVED with their reason, or NOT PINNED: a verifier refuses them). Updated on each push.</sub>"
} > "$out"
