"""Tests of the NFS front end (MOUNT, NFSv3, NLM, NSM, service)."""
