"""Load-benchmark harness for chat_actors: `python -m bench SCENARIO` (see bench/README.md)."""
