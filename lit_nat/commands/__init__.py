"""The command line: one function per command, the table in lit_nat.__main__, one parser (jsonargparse)."""
