"""The ``optiserve`` command line."""
