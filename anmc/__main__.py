from anmc.cli import main

main()
