from click.testing import CliRunner

from station.cli import cli


def test_help_lists_command_groups():
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0
    assert "keys" in result.output and "virtual" in result.output
