#!/usr/bin/env python3
"""Parses a Prometheus text-format page on stdin with the reference parser
(prometheus_client) and prints every sample as `name{label="value",...} value`,
labels sorted, one per line; a page the parser refuses exits non-zero."""
import sys

from prometheus_client.parser import text_string_to_metric_families


def main():
    families = list(text_string_to_metric_families(sys.stdin.read()))
    for family in families:
        if not family.documentation:
            sys.exit(f"family {family.name} has no HELP")
        if family.type == "unknown":
            sys.exit(f"family {family.name} has no TYPE")
        for s in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            print(f"{s.name}{{{labels}}} {s.value!r}")


if __name__ == "__main__":
    main()
