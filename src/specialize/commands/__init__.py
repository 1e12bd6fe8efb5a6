"""CLI command groups, one module each; registered in `specialize.cli`."""
