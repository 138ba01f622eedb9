from lit_nat.cli import main

if __name__ == "__main__":
    main()
