#!/usr/bin/env python3
"""Validates JSON files against a JSON Schema (2020-12) with python3-jsonschema.
Usage: check-schema.py SCHEMA FILE...   Prints one line per file: PATH<TAB>valid | PATH<TAB>invalid<TAB>first error."""
import json, sys
import jsonschema

schema = json.load(open(sys.argv[1]))
jsonschema.Draft202012Validator.check_schema(schema)
validator = jsonschema.Draft202012Validator(schema)
for path in sys.argv[2:]:
    try:
        doc = json.load(open(path))
    except ValueError as e:
        print(f"{path}\tinvalid\tnot JSON: {e}")
        continue
    errors = sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path))
    if errors:
        e = errors[0]
        print(f"{path}\tinvalid\t{'/'.join(map(str, e.absolute_path))}: {e.message}")
    else:
        print(f"{path}\tvalid")
