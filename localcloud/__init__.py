"""Local AWS for this project: moto plus the compute moto lacks (Lambda runtime, ECS agent).

Each component has ``start()`` and ``stop()`` so tests can use them as fixtures and the
command line (``python -m localcloud up``) can compose them. Importing the package loads
nothing (``scripts/promote.py`` uses ``localcloud.waiting`` without moto).
"""
