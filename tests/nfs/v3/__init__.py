"""Tests of the NFSv3 program."""
