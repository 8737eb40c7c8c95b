from axformer.cli import main

main()
