"""The method interface: everything a loss term, augmenter, target transform or stage event may see.

This package sits below every method package and below the engine. Methods import from here (and from
`data`, `models`, `config`, `errors`, `registry`); the engine imports the methods and implements the
contracts defined here (`RunControl`). Nothing here imports a method package or the engine, which is
what keeps the import graph a stack (tests/test_import_graph.py).
"""
