from streamfn.cli import main

main()
