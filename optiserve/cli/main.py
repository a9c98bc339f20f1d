"""The ``optiserve`` command: optimize, repo, serve, bench, rollout."""

from __future__ import annotations

import os

# torch's C++ deprecation warnings (quantized tensors) would interleave with progress bars
os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")

import typer  # noqa: E402

from . import repo, rollout  # noqa: E402
from .bench import bench_command  # noqa: E402
from .optimize import optimize_command  # noqa: E402
from .serve import serve_command  # noqa: E402
from .tune import tune_command  # noqa: E402
from serving.settings import help_text as settings_help  # noqa: E402

app = typer.Typer(
    name="optiserve",
    help="Make models fast, then serve them: optimize, verify, publish, serve, roll out.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


@app.callback()
def _check_settings() -> None:
    """A wrong OPTISERVE_* variable stops every command at once, named."""
    from serving.settings import SettingsError, settings

    try:
        settings()
    except SettingsError as e:
        from .common import fail

        fail(f"invalid setting: {e}")


app.command("optimize")(optimize_command)
app.add_typer(repo.app, name="repo")
app.command("serve", help=(
    "Serve models over the Open Inference Protocol on an embedded local Ray cluster.\n\n"
    "With no sizing flags the machine is filled (CPUs from the affinity mask and cgroup quota): "
    "one gateway replica per 8 CPUs (at least one, and one per GPU), 1 CPU each (0.25 below 4 "
    "CPUs); the CPUs left go to the model replicas, shared equally by the served versions, in "
    "as few replicas as keep each at most 4 CPUs (ONNX Runtime on CPU runs them as single-thread "
    "lanes, a batch at a time each; other runtimes as intra-op threads); GPU variants get one "
    "replica per GPU. The chosen layout is printed at start; the flags below override any part "
    "of it."),
    epilog="Settings (environment variables of the serving processes; a version's serve "
           "config wins where it sets the same):\n\n" + settings_help())(serve_command)
app.command("bench")(bench_command)
app.add_typer(rollout.app, name="rollout")
app.command("tune")(tune_command)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
