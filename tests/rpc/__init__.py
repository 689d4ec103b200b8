"""Tests of claudefs_gateway.rpc."""
