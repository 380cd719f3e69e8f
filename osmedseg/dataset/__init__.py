"""Dataset conventions: dataset.json, case listing, integrity checks and the built-in demo."""
