"""The optional C accelerator; everything else is in pyproject.toml.

``gae_sandbox._speedups`` speeds up host code's calls of the functions the sandbox replaces
and its audit hook. It is optional: where it does not compile (no compiler, no Python
headers) the install goes on and the package runs its pure-Python code, which is always
there (``python -m gae_sandbox --version`` says which is active).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "gae_sandbox._speedups",
            sources=["src/gae_sandbox/_speedups.c"],
            optional=True,  # a failed build is a warning, not a failed install
        )
    ]
)
