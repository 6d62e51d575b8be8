from git_slicer.cli import main

main()
