#!/usr/bin/env python3
"""Fails (exit 1) when a CTest test does not carry exactly one tier label, naming each such test.

  check_test_tiers.py --build-dir build/release [--ctest ctest] [--tiers unit reference e2e]

Reads the tests and their labels from `ctest --show-only=json-v1`, which lists the gtests that
gtest_discover_tests found at build time as well as the add_test ones.
"""
import argparse
import json
import subprocess
import sys


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build-dir", required=True)
    ap.add_argument("--ctest", default="ctest")
    ap.add_argument("--tiers", nargs="+", default=["unit", "reference", "e2e"])
    args = ap.parse_args()

    out = subprocess.run([args.ctest, "--test-dir", args.build_dir, "--show-only=json-v1"],
                         check=True, capture_output=True, text=True).stdout
    tests = json.loads(out)["tests"]
    if not tests:
        print(f"check_test_tiers: no tests in {args.build_dir}", file=sys.stderr)
        return 1
    bad = []
    counts = {t: 0 for t in args.tiers}
    for test in tests:
        labels = next((p["value"] for p in test.get("properties", []) if p["name"] == "LABELS"), [])
        tiers = [label for label in labels if label in counts]
        if len(tiers) == 1:
            counts[tiers[0]] += 1
        else:
            bad.append(f"{test['name']} (labels: {', '.join(labels) or 'none'})")
    print("check_test_tiers: " + ", ".join(f"{n} {t}" for t, n in counts.items()))
    if bad:
        print(f"check_test_tiers: {len(bad)} test(s) without exactly one tier label of "
              f"{', '.join(args.tiers)} (see tests/CMakeLists.txt):", file=sys.stderr)
        for line in bad:
            print(f"  {line}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
