"""Types of the compiled core: the pure-Python twin's, which keeps the same API."""

from ._core_py import PyLruCache

CLruCache = PyLruCache
