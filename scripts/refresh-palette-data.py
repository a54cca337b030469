#!/usr/bin/env python3
"""Derives testdata/palette-operations.json from Palette's API spec.

The tests need only a few facts of the 2 MB spec: the method and path template of every operation,
and what the API key endpoints answer. Keeping those in the repository lets a plain clone run the
whole suite; the spec (../shared/palette/palette-api-spec.json beside the repository) only
refreshes them.

    python3 scripts/refresh-palette-data.py            # rewrite the data from the spec
    python3 scripts/refresh-palette-data.py --check    # fail if the committed data is stale
    python3 scripts/refresh-palette-data.py --spec FILE [--check]
"""

import argparse
import hashlib
import json
import pathlib
import sys

REPO = pathlib.Path(__file__).resolve().parent.parent
DEFAULT_SPEC = REPO.parent / "shared" / "palette" / "palette-api-spec.json"
DATA = REPO / "testdata" / "palette-operations.json"
METHODS = ("get", "put", "post", "delete", "options", "head", "patch")


def derive(spec_bytes: bytes) -> str:
    spec = json.loads(spec_bytes)
    operations = []
    for template, item in spec["paths"].items():
        for method in item:
            if method in METHODS:
                operations.append([method.upper(), template])
    defs = spec["definitions"]
    api_key_reads = {}
    for template in ("/v1/apiKeys", "/v1/apiKeys/{uid}"):
        api_key_reads[f"GET {template}"] = spec["paths"][template]["get"]["responses"]["200"]["schema"]["$ref"]
    facts = {
        # Why reads of /v1/apiKeys may stay open (src/proxy/credential_endpoints.rs).
        "v1ApiKeySpec.key.description": defs["v1ApiKeySpec"]["properties"]["key"]["description"],
        "v1ApiKeyCreateResponse.apiKey": "apiKey" in defs["v1ApiKeyCreateResponse"]["properties"],
        "api_key_read_200_schemas": api_key_reads,
    }
    head = {
        "about": "Derived from Palette's API spec by scripts/refresh-palette-data.py; do not edit by hand.",
        "spec_title": spec["info"]["title"],
        "spec_sha256": hashlib.sha256(spec_bytes).hexdigest(),
        "facts": facts,
    }
    # One operation a line, so a spec update reads as a short diff.
    lines = ["{"]
    for key, value in head.items():
        lines.append(f"  {json.dumps(key)}: {json.dumps(value, sort_keys=True)},")
    lines.append('  "operations": [')
    lines.append(",\n".join(f"    {json.dumps(op)}" for op in operations))
    lines.append("  ]")
    lines.append("}")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spec", type=pathlib.Path, default=DEFAULT_SPEC)
    ap.add_argument("--check", action="store_true", help="compare with the committed data, write nothing")
    args = ap.parse_args()
    text = derive(args.spec.read_bytes())
    count = len(json.loads(text)["operations"])  # and the hand-made layout is still JSON
    if args.check:
        current = DATA.read_text() if DATA.exists() else ""
        if current != text:
            print(f"error: {DATA.relative_to(REPO)} is stale: run python3 scripts/refresh-palette-data.py", file=sys.stderr)
            return 1
        print(f"{DATA.relative_to(REPO)} matches {args.spec.name}")
        return 0
    DATA.parent.mkdir(exist_ok=True)
    DATA.write_text(text)
    print(f"wrote {DATA.relative_to(REPO)}: {count} operations")
    return 0


if __name__ == "__main__":
    sys.exit(main())
