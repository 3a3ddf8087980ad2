"""The synthetic-data generator's parts, driven by `models.data.generate` (see GENERATOR.md).

`params` holds the documented constants and planted coefficients, `vocab` the integer-coded
view of domain.py, `sampling` the vectorised draws and Arrow column helpers. `companies`,
`internships` and `students` draw the entity tables, `interactions` lets students see, save
and apply, `outcomes` draws the selection decisions, and `sinks` writes Parquet or CSV.
"""
