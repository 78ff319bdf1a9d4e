from streamfn.cli.main import main

main()
