"""Parses a Prometheus text exposition page from stdin with the reference
parser (PyPI prometheus_client) and prints its families as JSON:
{name: {"type": ..., "samples": [{"name": ..., "labels": {...}, "value": ...}]}}.
A page the parser refuses makes this exit non-zero with its error."""

import json
import sys

from prometheus_client.parser import text_string_to_metric_families

families = {}
for family in text_string_to_metric_families(sys.stdin.read()):
    families[family.name] = {
        "type": family.type,
        "samples": [
            {"name": s.name, "labels": s.labels, "value": s.value}
            for s in family.samples
        ],
    }
json.dump(families, sys.stdout)
