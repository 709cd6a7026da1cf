"""Benchmark commands (``python -m benchmarks.<name>``) and what they share."""
import sys


def run_command(main, prog: str) -> None:
    """Run a command's ``main``: bad input (a missing folder, a wrong value), an unusable checkpoint, a folder in
    use, a non-finite loss or gradient, a stalled process (:class:`TimeoutError`) end in one clear line, no
    traceback."""
    from avalanche_convprompt.runs.checkpoint import CheckpointError
    from avalanche_convprompt.runs.files import FolderInUse
    try:
        main()
    except (FileNotFoundError, ValueError, OSError, CheckpointError, FolderInUse, FloatingPointError) as err:
        sys.exit(f"{prog}: error: {err}")


# console scripts (setup.py): the commands from any folder once the package is installed; exit status 0
def run_cli() -> None:
    from benchmarks.run import main
    run_command(main, "convprompt-run")


def report_cli() -> None:
    from benchmarks.report import main
    run_command(main, "convprompt-report")


def recipes_cli() -> None:
    from benchmarks.recipes import main
    main()


def parameters_cli() -> None:
    from benchmarks.parameters import main
    run_command(main, "convprompt-parameters")
