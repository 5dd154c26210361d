# Compiled deep_sizeof: the C-level entry point for other Cython modules.
#
#     from memcache_ext._sizeof_c cimport c_deep_sizeof
#
# Same result as memcache_ext._sizeof_c.deep_sizeof(obj) with the default
# budget. Small exact builtins (int, float, str, bytes, None, bool) are
# measured without any Python-level call. Raises (returns -1 with an exception
# set) only when the top-level object's own __sizeof__ fails or on MemoryError.

cdef Py_ssize_t c_deep_sizeof(object obj) except -1
