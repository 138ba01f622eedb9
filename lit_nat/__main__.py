from lit_nat.commands.cli import entry

if __name__ == "__main__":
    entry()
