"""The ``atmc`` command: recipes, run folders, training stages, reports.

Built on the library (``atmc_plugin``), which never imports it. Tools (Torch-Pruning, INC) are
reached only through their adapters' plugin hooks; see ``docs/architecture.md``.
"""
