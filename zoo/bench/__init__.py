"""Benchmarks users can run too (`zoo bench ...`); results go to benchmarks/results/<name>.{json,md}."""
