"""How the parts meet: tracer, machine topology, the systems, the analytic model, runs, sweeps, config and CLI."""
