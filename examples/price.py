"""A pricing program for `async-engine worker`: prices the quote lines of one task.

Reads the task's items on standard input, one JSON object a line ({"index": I, "item": ITEM}),
and writes one outcome a line on standard output: {"index": I} for a priced line, or
{"index": I, "code": 7001, "statusMessage": "..."} for one it cannot price. Anything on
standard error is shown by the worker, and its last line becomes the task's error if the
program exits non-zero. The task's context is in ASYNC_ENGINE_* environment variables.

    cargo run -p async-engine -- worker --queue pricing -- python3 examples/price.py
"""
import json
import os
import sys

PRICES = {"TV-PREMIUM": 49.0, "BROADBAND-1G": 39.0, "MOBILE-5G": 25.0}

print(f"pricing task {os.environ['ASYNC_ENGINE_TASK_ID']}, attempt {os.environ['ASYNC_ENGINE_ATTEMPT']}",
      file=sys.stderr)
for line in sys.stdin:
    entry = json.loads(line)
    quote = entry["item"]
    code = quote.get("productCode")
    if code in PRICES and quote.get("quantity", 0) <= 100:
        print(json.dumps({"index": entry["index"]}))
    elif code in PRICES:
        print(json.dumps({"index": entry["index"], "code": 7002, "statusMessage": "Quantity over 100"}))
    else:
        print(json.dumps({"index": entry["index"], "code": 7001, "statusMessage": f"No price for {code}"}))
