"""The `smnas` command line: one Typer app; each command is a thin wrapper over a library function."""

from __future__ import annotations

import sys

import typer
from rich.console import Console

from smnas_trt.errors import SmnasError

app = typer.Typer(
    name="smnas",
    help="Hardware-aware SM-NAS for object detectors: profile latency, search, deploy.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)


def main() -> None:
    """Entry point: user errors print one line and exit 2, with no traceback."""
    try:
        app(standalone_mode=False)
    except SmnasError as e:
        err_console.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except (typer.Abort, KeyboardInterrupt):
        err_console.print("interrupted")
        sys.exit(130)
    except Exception as e:  # click usage errors carry their own exit code
        code = getattr(e, "exit_code", None)
        if code is not None and hasattr(e, "show"):
            e.show()  # type: ignore[attr-defined]
            sys.exit(code)
        raise


# ---------------------------------------------------------------------------------------------- space
space_app = typer.Typer(help="Inspect search spaces and architectures.", no_args_is_help=True)
app.add_typer(space_app, name="space")


@space_app.command("sample")
def space_sample(
    space: str = typer.Option("demo", help="Space YAML path or built-in name (demo, paper)."),
    n: int = typer.Option(5, "-n", help="How many architectures."),
    seed: int = typer.Option(0, help="Random seed."),
    structures: bool = typer.Option(False, help="Sample structures only (standard module genes)."),
) -> None:
    """Print canonical strings of randomly sampled architectures.

    Example: smnas space sample --space configs/space_demo.yaml -n 5 --seed 0
    """
    import random

    from smnas_trt.space import load_space

    search_space = load_space(space)
    rng = random.Random(seed)
    for _ in range(n):
        arch = search_space.sample_structure(rng) if structures else search_space.sample_arch(rng)
        typer.echo(str(arch))
