from livepose.cli.app import main

main()
