"""A throwaway multi-node Swarm (Docker-in-Docker nodes) and registry for tests and benchmarks."""
