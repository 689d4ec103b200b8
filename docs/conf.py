# Sphinx configuration for claudefs-gateway's documentation.
#
# Built in CI with warnings as errors (tests/test_docs.py):
#     .venv/bin/sphinx-build -W -b html docs docs/_build/html

project = "claudefs-gateway"
author = "claudefs-gateway developers"
copyright = "claudefs-gateway developers"  # noqa: A001 - Sphinx's name
extensions: list[str] = []
root_doc = "index"
exclude_patterns = ["_build"]
# The example configuration and the state-machine drawings are shown as files.
html_static_path: list[str] = []
html_theme = "alabaster"
