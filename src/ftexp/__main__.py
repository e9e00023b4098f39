"""`python -m ftexp` and the `ftexp` command: the CLI (ftexp.cli), then a quick exit once done."""

from ftexp.cli import main as cli_main
from ftexp.runs.process import run_command


def main() -> None:
    run_command(cli_main)


if __name__ == "__main__":
    main()
