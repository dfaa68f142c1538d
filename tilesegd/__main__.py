"""`python -m tilesegd` runs the command line."""

from tilesegd.cli.main import cli

if __name__ == "__main__":
    cli()
