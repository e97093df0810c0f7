from dm_tune.cli import main

main()
