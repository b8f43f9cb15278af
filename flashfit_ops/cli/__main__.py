from flashfit_ops.cli import main

main()
