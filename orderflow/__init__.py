"""orderflow's command line: starts the system, runs one service, talks to a running system."""
