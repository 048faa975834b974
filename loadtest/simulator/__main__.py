from loadtest.simulator.run import main

main()
