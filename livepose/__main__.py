from livepose.cli import main

main()
