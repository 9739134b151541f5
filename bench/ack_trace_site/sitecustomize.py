"""Loaded by a bot process the scale-out bench starts with `--trace-acks`: see bench/ack_trace.py."""

import os

if os.environ.get("ACK_TRACE_DIR"):
    from bench.ack_trace import install

    install(os.environ["ACK_TRACE_DIR"])
