"""A sample shop: a point-of-sale database (`database`) and a folder of product images (`images`).

The generators the benchmarks and the tests use, installed with Capsule.
"""
