"""Tests for the S3 front end (claudefs_gateway.s3)."""
