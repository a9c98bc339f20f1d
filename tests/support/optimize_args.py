"""The optimizer's options as `optiserve optimize` parses them, for benchmarks that run the
optimizer in process (`-- --students l3 ...` then means what it means on the command line)."""

from __future__ import annotations


def optimize_args(extra: list[str], source: str = "minilm"):
    """The CLI's own option parsing, so `-- --students l3 ...` means what it means there."""
    import typer.main

    from optiserve.cli.optimize import optimize_command

    captured = {}

    def capture(opts, progress=None):
        captured["opts"] = opts
        raise SystemExit(0)

    import optimizers

    real = optimizers.optimize
    optimizers.optimize = capture
    try:
        app = typer.Typer(add_completion=False)
        app.command()(optimize_command)
        typer.main.get_command(app)([source, "--publish", "none", "-q", *extra],
                                    standalone_mode=False)
    except SystemExit:
        pass
    finally:
        optimizers.optimize = real
    return captured["opts"]


def split_passthrough(argv: list[str]) -> tuple[list[str], list[str]]:
    """A benchmark's own arguments, and those after ``--`` (the optimizer's options)."""
    if "--" not in argv:
        return argv, []
    i = argv.index("--")
    return argv[:i], argv[i + 1:]
