"""What is computed: model specs, decode traces, the per-layer operator graph, KV formats and the PQ math."""
