"""`visionzoo serve`: any model file behind HTTP, requests batched dynamically (app, batcher, decode, metrics);
`bench-serve`'s load generator (loadgen)."""
