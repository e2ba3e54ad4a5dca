"""The presets (``default``, ``tiny``), installed as the package ``mip360cli.configs``.

This folder stays at the top of the repository; ``pyproject.toml`` maps it into the
package, so a wheel carries the YAML files and ``importlib.resources`` finds them.
"""
