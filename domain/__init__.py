"""Capsule's pure core: models and rules with no I/O, no clock and no infrastructure."""
