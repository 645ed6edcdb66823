// switchboard-bench: the XMPP load generator. See Commands.swift for the CLI.
SwitchboardBench.main()
