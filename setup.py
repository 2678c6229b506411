"""Builds the kernel's optional C codec (kernel/_speedups.c); everything else is in pyproject.toml.

``optional=True``: where no C compiler is found the install still succeeds and
the kernel uses its pure-Python codec (kernel/dagcbor.py), which is the same
format, only slower.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "kernel._speedups",
            ["kernel/_speedups.c"],
            optional=True,
            extra_compile_args=["-O2", "-std=c11", "-Wall", "-Wextra", "-Wno-unused-parameter"],
        )
    ]
)
