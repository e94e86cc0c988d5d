"""The container image's code: a scikit-learn model as an HTTP endpoint and a batch worker."""
