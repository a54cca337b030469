#!/usr/bin/env python3
"""Writes prometheusrule.yaml (the Prometheus Operator's PrometheusRule) from rules.yaml.

rules.yaml is the source: promtool checks and unit-tests it. The PrometheusRule's `spec` is the
same text, indented, so the two cannot drift apart:

    deploy/prometheus/sync-rules.py            # rewrite prometheusrule.yaml
    deploy/prometheus/sync-rules.py --check    # exit 1 if prometheusrule.yaml is out of date

With PyYAML installed, --check also compares the parsed `spec` with the parsed rules.yaml.
"""

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "rules.yaml"
TARGET = HERE / "prometheusrule.yaml"

HEADER = """\
# GENERATED from rules.yaml by sync-rules.py: edit rules.yaml, then run
#   deploy/prometheus/sync-rules.py
#
# The Prometheus Operator loads this PrometheusRule when its labels match the Prometheus
# resource's ruleSelector: kube-prometheus-stack, for one, selects `release: <its release name>`
# by default, so add that label here (or in a kustomize overlay).
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: palette-gateway
  labels:
    app.kubernetes.io/name: palette-gateway
    app.kubernetes.io/component: gateway
    app.kubernetes.io/part-of: palette-gateway
spec:
"""


def render() -> str:
    lines = SOURCE.read_text(encoding="utf-8").splitlines()
    # Drop rules.yaml's own header comment (it talks about itself); keep everything from `groups:`.
    start = next(i for i, line in enumerate(lines) if line.startswith("groups:"))
    body = "".join(("  " + line if line.strip() else "") + "\n" for line in lines[start:])
    return HEADER + body


def semantic_check() -> bool:
    try:
        import yaml  # noqa: PLC0415 (optional)
    except ImportError:
        print("sync-rules: PyYAML not installed, compared the text only", file=sys.stderr)
        return True
    rules = yaml.safe_load(SOURCE.read_text(encoding="utf-8"))
    rule = yaml.safe_load(TARGET.read_text(encoding="utf-8"))
    if rule.get("spec") != rules:
        print("sync-rules: prometheusrule.yaml's spec differs from rules.yaml", file=sys.stderr)
        return False
    return True


def main(argv: list[str]) -> int:
    expected = render()
    if argv[1:] == ["--check"]:
        actual = TARGET.read_text(encoding="utf-8") if TARGET.exists() else ""
        if actual != expected:
            print(
                f"sync-rules: {TARGET.name} is out of date with {SOURCE.name}: "
                "run deploy/prometheus/sync-rules.py",
                file=sys.stderr,
            )
            return 1
        return 0 if semantic_check() else 1
    if argv[1:]:
        print(__doc__, file=sys.stderr)
        return 2
    TARGET.write_text(expected, encoding="utf-8")
    print(f"wrote {TARGET}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
