"""Test helpers: oracle formulas, the explicit-mask eager oracle, random kernel cases and tiny models."""
