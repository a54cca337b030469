#!/usr/bin/env python3
"""Prints the metric names that the Grafana dashboard and the Prometheus rules use.

A test compares them with what a running gateway exports on /metrics, so that the dashboard and
the alerts cannot drift away from the code. Standard library only (PyYAML is used when present).

    deploy/metric-names.py             names as used in queries, one per line, sorted
                                       (histogram series keep their _bucket/_sum/_count suffix)
    deploy/metric-names.py --base      base names: _bucket/_sum/_count stripped, i.e. the names of
                                       the `# TYPE` lines in the exposition
    deploy/metric-names.py --all       also the series Prometheus makes itself (`up`), which no
                                       exporter serves; by default they are left out
    deploy/metric-names.py --where     each name with the files that use it (tab-separated)
    deploy/metric-names.py --promql-rules
                                       every expression, Grafana variables filled in, as a
                                       Prometheus rule file, for `promtool check rules`

Options combine (--base --all). Exit status 1 if a name does not look like one of the gateway's
(palette_gateway_*, process_*) or Prometheus' own: a sign this script misread an expression.
"""

import json
import os
import re
import sys
from pathlib import Path

DEPLOY = Path(__file__).resolve().parent
DASHBOARDS = [DEPLOY / "grafana" / "palette-gateway.json"]
RULES = [DEPLOY / "prometheus" / "rules.yaml"]

# Series that Prometheus itself adds to every scrape: no exporter serves them.
SYNTHETIC = {"up", "scrape_duration_seconds", "scrape_samples_scraped",
             "scrape_samples_post_metric_relabeling", "scrape_series_added"}
EXPECTED_PREFIXES = ("palette_gateway_", "process_")
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")

KEYWORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right",
            "bool", "offset", "inf", "nan", "start", "end", "atan2"}

# Grafana's variables, filled in with values that keep the expression valid PromQL.
GRAFANA_VARS = [
    (re.compile(r"\$__(rate_)?interval|\$\{__(rate_)?interval\}|\$__range|\$\{__range\}"), "5m"),
    (re.compile(r"\$\{?[A-Za-z_][A-Za-z0-9_]*(?::[a-z]+)?\}?"), ".*"),
]


def fill_grafana_vars(expr: str) -> str:
    for pattern, value in GRAFANA_VARS:
        expr = pattern.sub(value, expr)
    return expr


# --- where the expressions are ------------------------------------------------------------------

def dashboard_exprs(path: Path):
    """Every panel target's `expr`, at any depth (rows nest panels), and the templating queries."""
    doc = json.loads(path.read_text(encoding="utf-8"))

    def walk(node):
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "expr" and isinstance(value, str):
                    yield value
                elif key != "templating":
                    yield from walk(value)
        elif isinstance(node, list):
            for item in node:
                yield from walk(item)

    yield from walk(doc)
    for var in doc.get("templating", {}).get("list", []):
        if var.get("type") != "query":
            continue
        query = var.get("query")
        if isinstance(query, dict):
            query = query.get("query")
        if isinstance(query, str) and query:
            # label_values(metric{...}, label) names a metric; label_values(label) names none.
            m = re.fullmatch(r"\s*label_values\((.*),\s*[A-Za-z_][A-Za-z0-9_]*\s*\)\s*", query, re.S)
            if m:
                yield m.group(1)
            elif not re.fullmatch(r"\s*label_values\(\s*[A-Za-z_][A-Za-z0-9_]*\s*\)\s*", query):
                yield re.sub(r"^\s*query_result\((.*)\)\s*$", r"\1", query, flags=re.S)


def rule_exprs(path: Path):
    """Every rule's `expr` in a Prometheus rule file."""
    text = path.read_text(encoding="utf-8")
    try:
        if os.environ.get("METRIC_NAMES_NO_YAML"):  # check.sh compares both readers
            raise ImportError
        import yaml  # noqa: PLC0415 (optional)
    except ImportError:
        yield from rule_exprs_without_yaml(text)
        return
    doc = yaml.safe_load(text)
    for group in doc.get("groups", []):
        for rule in group.get("rules", []):
            yield str(rule["expr"]).strip()


def rule_exprs_without_yaml(text: str):
    """`expr:` values of a rule file, plain or as a block scalar (|, >, with chomping)."""
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        m = re.match(r"^(\s*)(?:-\s+)?expr:\s*(.*)$", lines[i])
        i += 1
        if not m:
            continue
        value = m.group(2).strip()
        if value and value[0] in "|>":
            block = []
            indent = None
            while i < len(lines):
                line = lines[i]
                if line.strip():
                    width = len(line) - len(line.lstrip())
                    if indent is None:
                        indent = width
                    if width < indent:
                        break
                    block.append(line[indent:])
                else:
                    block.append("")
                i += 1
            yield "\n".join(block).strip()
        else:
            if value[:1] in "'\"" and value[-1:] == value[:1]:
                value = value[1:-1]
            yield value


# --- reading names out of PromQL ----------------------------------------------------------------

def metric_names(expr: str) -> set:
    e = fill_grafana_vars(expr)
    # String literals (label values, regexes): may hold anything.
    e = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', e)
    # Label matchers and range/subquery selectors.
    e = re.sub(r"\{[^{}]*\}", " ", e)
    e = re.sub(r"\[[^\[\]]*\]", " ", e)
    # Grouping and matching modifiers with their label lists.
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)", " ", e)
    # Durations (offset 5m) and numbers (0.99, 1e3, 0x1f).
    e = re.sub(r"\b\d+(?:\.\d+)?(?:ms|s|m|h|d|w|y)\b", " ", e)
    e = re.sub(r"\b0x[0-9a-fA-F]+\b|\b\d+(?:\.\d*)?(?:[eE][+-]?\d+)?\b|\.\d+(?:[eE][+-]?\d+)?", " ", e)
    names = set()
    for m in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", e):
        word = m.group(0)
        rest = e[m.end():].lstrip()
        if rest.startswith("("):
            continue  # a function or aggregation
        if word.lower() in KEYWORDS:
            continue
        names.add(word)
    return names


def base_name(name: str) -> str:
    for suffix in HISTOGRAM_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def all_exprs():
    for path in DASHBOARDS:
        for expr in dashboard_exprs(path):
            yield path, expr
    for path in RULES:
        for expr in rule_exprs(path):
            yield path, expr


def promql_rules() -> str:
    lines = ["# Generated by deploy/metric-names.py --promql-rules: every expression of the",
             "# dashboard and the rules as a recording rule, for `promtool check rules`.",
             "groups:", "  - name: palette-gateway-expressions", "    rules:"]
    for n, (path, expr) in enumerate(all_exprs()):
        lines.append(f"      - record: check:{path.stem.replace('-', '_').replace('.', '_')}:{n}")
        lines.append(f"        expr: {json.dumps(fill_grafana_vars(expr))}")
    return "\n".join(lines) + "\n"


def main(argv):
    flags = set(argv[1:])
    known = {"--base", "--all", "--where", "--promql-rules"}
    if flags - known:
        print(__doc__, file=sys.stderr)
        return 2
    if "--promql-rules" in flags:
        sys.stdout.write(promql_rules())
        return 0
    used = {}
    for path, expr in all_exprs():
        for name in metric_names(expr):
            used.setdefault(name, set()).add(str(path.relative_to(DEPLOY.parent)))
    status = 0
    for name in sorted(used):
        if name not in SYNTHETIC and not name.startswith(EXPECTED_PREFIXES):
            print(f"metric-names: unexpected name {name!r} (in {', '.join(sorted(used[name]))})", file=sys.stderr)
            status = 1
    shown = {}
    for name, files in used.items():
        if name in SYNTHETIC and "--all" not in flags:
            continue
        key = base_name(name) if "--base" in flags else name
        shown.setdefault(key, set()).update(files)
    for name in sorted(shown):
        if "--where" in flags:
            print(f"{name}\t{' '.join(sorted(shown[name]))}")
        else:
            print(name)
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv))
