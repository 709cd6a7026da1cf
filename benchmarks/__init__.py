"""Benchmark commands (``python -m benchmarks.<name>``) and what they share."""
import sys


def run_command(main, prog: str) -> None:
    """Run a command's ``main``: bad input (a missing folder, a wrong value) ends in one clear line, no traceback."""
    try:
        main()
    except (FileNotFoundError, ValueError, OSError) as err:
        sys.exit(f"{prog}: error: {err}")
