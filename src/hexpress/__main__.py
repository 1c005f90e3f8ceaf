from hexpress.cli import main

main()
