"""End-to-end tests of the wire contract (/work/shared/PROTOCOL.md) against a real server."""
