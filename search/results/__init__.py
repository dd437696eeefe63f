"""The results wing: reading what runs left. Validation evidence and its statistics, export, the
`show`/`studies` tables, the report (facts, verdict, charts, blocks, render) and the dashboard.

May import: `search.study`, `search.store` and `mfha` (never torch). Never `search.run`.
"""
