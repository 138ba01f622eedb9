"""``python -m lit_nat``: the command table is :data:`lit_nat.commands.COMMANDS`."""

from lit_nat.commands.cli import entry

if __name__ == "__main__":
    entry()
