"""geokit's bundled plugins. Each module registers through the ``geokit`` entry-point group in
pyproject.toml, exactly as a third-party package would; none is imported by ``geokit`` itself."""
