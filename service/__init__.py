"""The container image's code: a scikit-learn model as an HTTP endpoint and a batch worker."""

__version__ = "0.1.0"  # the project's version (pyproject.toml says the same)
