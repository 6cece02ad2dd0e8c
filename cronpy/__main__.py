from cronpy.fast import main

main()
