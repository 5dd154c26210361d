"""The command-line tools: ``python -m memcache_ext info|bench|demo|loadtest``.

This is the top layer: it may import anything in the package, and nothing in
the library imports it (``tests/test_layers.py`` checks both).
"""
