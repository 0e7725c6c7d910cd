"""PostgreSQL schema migrations: ``NNNN_name.sql`` files applied by ``migrations.apply_postgres``.

They live in their own package, beside the SQLite ones, because the two dialects differ
(identity columns, ``COLLATE "C"``, ``bigint``) while the numbering and the recording in
``schema_migrations`` are the same: version N means the same logical schema in both.
"""
