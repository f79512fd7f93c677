"""The ``crystal-rt`` command line: ``main`` (the parser and error handling) and one module per command;
nothing heavy is imported until a command runs."""

__all__: list[str] = []
