#!/usr/bin/env bash
# The response reader's property test at length: ten million random and damaged responses
# (the normal test suite runs 100,000). Release build; prints the count and how they ended.
#   bash bench/http_fuzz.sh [CASES]
set -euo pipefail
cd "$(dirname "$0")/.."
cases="${1:-10000000}"
REPROD_HTTP_CASES="$cases" cargo test --release -p reprod-http --lib property:: -- --nocapture 2>&1 \
    | grep -E "cases:|test result"
