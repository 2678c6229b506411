from .company.cli import main

main()
