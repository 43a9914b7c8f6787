//! The real [`World`](super::world::World) of `anxin test-rules`: the pipeline's shard and
//! store on an in-memory database, on a virtual clock.
