from shadeflow.flows.cli import main

main()
