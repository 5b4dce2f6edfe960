from asynctasq.cli import main

main()
