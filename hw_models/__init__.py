"""What computes: one module per hardware component (parameters, pure cost functions, a small SimPy component)."""
