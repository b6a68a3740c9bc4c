"""The one native part of Capsule, built where a C compiler is found: the page hasher.

Everything else is in pyproject.toml. The extension is optional: where it cannot be built, the
install goes on and database pages are hashed one call at a time (see
adapters/repository/pageids.c and docs/performance.md, "Database pages hashed sixteen chunks at a
time").
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "capsule.adapters.repository._pageids",
            sources=["adapters/repository/pageids.c"],
            extra_compile_args=["-O3", "-Wno-psabi"],
            optional=True,
        )
    ]
)
