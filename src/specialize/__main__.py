"""`python -m specialize ...` (and `accelerate launch -m specialize ...`) run the CLI."""

from specialize.cli import app

app()
