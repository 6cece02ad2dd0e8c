from cronpy.cli import main

main()
