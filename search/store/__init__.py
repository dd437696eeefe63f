"""The store wing: where studies live. Storage made from a URL (SQLite, PostgreSQL, MySQL), the
fast RDB reads, opening a study by name, the artifact store and folders the user names.

May import: `search.study` and `mfha.errors`.
"""
