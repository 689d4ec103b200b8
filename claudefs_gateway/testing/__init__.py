"""Public test helpers: fakes and fixtures other packages' tests may use."""
