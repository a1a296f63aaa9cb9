"""`python -m corral`: the same as the `corral` console script."""

from corral.cli.main import main

if __name__ == "__main__":
    main()
